"""Every training loss, and what it declares about itself: the data it needs, whether it needs a reference model,
its settings (a typed dataclass of cringe.losses that holds their defaults), how its loss is normalised, and its two
implementations (plain logits, and the chunked path that never builds the [tokens, vocab] logits). The trainer, the
loop, the demo and the model card ask a `LossSpec` instead of comparing names.

Both implementations take the loss's settings and the batch the trainer built and return (loss, stats): the loss
already divided by the batch's item count (`num_items`, global under gradient accumulation and DDP), and
per-sequence statistics for the log. `reference()` returns the reference model's sequence log-probs, computed only
when a loss asks.

Methods trained by another library (TRL's RLOO in the demo) are `EXTERNAL_METHODS`: named, described on a model
card, never one of the losses `cringe train` takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from cringe import chunked as C
from cringe import losses as L
from cringe.errors import UserError


@dataclass(frozen=True)
class LossSpec:
    name: str
    data_kind: str  # 'pairwise' (chosen, rejected), 'binary' (completion, good/bad) or 'sft' (a completion)
    needs_reference: bool  # a reference model's log-probs (the DPO family)
    settings_type: type  # its settings: a frozen dataclass of cringe.losses holding each setting's default
    normalised_by: str  # 'pairs' or 'tokens': what the loss of a batch is divided by
    plain: Callable  # (settings, logits, labels, batch, *, generator, num_items, reference) -> (loss, stats)
    chunked: Callable  # (settings, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items,
    #                     chunk_size, reference) -> (loss, stats)
    length_average: bool = False  # sequence log-probs divided by their length (IPO)
    # Both answers of a pair may share one row, [prompt | chosen | rejected] (cringe.prefix_sharing): the loss
    # reads the answers' tokens as 2B sequences, chosen first, and never the prompt's.
    shares_prefix: bool = False
    summary: str = ""

    @property
    def settings(self) -> tuple[str, ...]:
        """The names of the settings it reads."""
        return tuple(f.name for f in dataclasses.fields(self.settings_type))

    def make_settings(self, given: Mapping):
        """Its settings from `given` (any mapping or object of setting names; other keys, and None, mean unset):
        the given values over the dataclass's defaults, checked there."""
        values = given if isinstance(given, Mapping) else vars(given)
        return self.settings_type(**{k: values[k] for k in self.settings if values.get(k) is not None})


# ----- Pairwise Cringe ---------------------------------------------------------------------------------------------


def _pairwise_stats(s: dict) -> dict:
    return {
        "gate": s["gate"],
        "gate_open": (s["gate"] > 0.5).float(),
        "delta": s["delta"],
        "logps/chosen": s["chosen_logps"],
        "logps/rejected": s["rejected_logps"],
        "tokens/chosen": s["chosen_tokens"].float(),
        "tokens/rejected": s["rejected_tokens"].float(),
    }


def _pairwise_cringe_plain(settings, logits, labels, batch, *, generator, num_items, reference):
    half = logits.shape[0] // 2
    out = L.pairwise_cringe_loss(
        logits[:half],
        labels[:half],
        logits[half:],
        labels[half:],
        generator=generator,
        num_items=num_items,
        **dataclasses.asdict(settings),
    )
    return out.loss, _pairwise_stats(out.stats)


def _pairwise_cringe_chunked(
    settings, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference
):
    pairs = int(batch["num_sequences"]) // 2
    loss, stats = C.pairwise_cringe_loss(
        hidden,
        weight,
        bias,
        targets,
        seq_index,
        pairs,
        generator=generator,
        num_items=num_items,
        chunk_size=chunk_size,
        **dataclasses.asdict(settings),
    )
    return loss, _pairwise_stats(stats)


# ----- binary Cringe -----------------------------------------------------------------------------------------------


def _binary_cringe_plain(settings, logits, labels, batch, *, generator, num_items, reference):
    positive = batch["is_positive"]
    out = L.binary_cringe_loss(
        logits,
        labels,
        positive,
        **dataclasses.asdict(settings),
        generator=generator,
        num_items=num_items,
    )
    stats = {"positive_frac": positive.float(), "tokens": out.stats["n_tokens"].float()}
    for name, selected in (("positive", positive), ("negative", ~positive)):
        if selected.any():
            stats[f"logps/{name}"] = out.stats["logps"][selected]
    return out.loss, stats


def _binary_cringe_chunked(
    settings, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference
):
    positive = batch["is_positive"]
    loss = C.binary_cringe_loss(
        hidden,
        weight,
        bias,
        targets,
        positive[seq_index],
        **dataclasses.asdict(settings),
        generator=generator,
        num_items=num_items,
        chunk_size=chunk_size,
    )
    tokens = torch.bincount(seq_index, minlength=int(batch["num_sequences"])).float()
    return loss, {"positive_frac": positive.float(), "tokens": tokens}


# ----- SFT ---------------------------------------------------------------------------------------------------------


def _sft_plain(settings, logits, labels, batch, *, generator, num_items, reference):
    out = L.sft_loss(logits, labels, num_items=num_items)
    return out.loss, {"logps": out.stats["logps"], "tokens": out.stats["n_tokens"].float()}


def _sft_chunked(
    settings, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference
):
    loss = C.sft_loss(hidden, weight, bias, targets, num_items=num_items, chunk_size=chunk_size)
    return loss, {"tokens": torch.bincount(seq_index, minlength=int(batch["num_sequences"])).float()}


# ----- the DPO family ----------------------------------------------------------------------------------------------


def _dpo_stats(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen_logps,
        "logps/rejected": rejected_logps,
    }


def _dpo_family(loss_type: str, length_average: bool):
    def plain(settings, logits, labels, batch, *, generator, num_items, reference):
        total, count = L.sequence_logps(logits, labels)
        policy = total / count.clamp_min(1) if length_average else total
        ref = reference()
        half = policy.shape[0] // 2
        losses, chosen_r, rejected_r = L.dpo_loss(
            policy[:half], policy[half:], ref[:half], ref[half:], beta=settings.beta, loss_type=loss_type
        )
        loss = losses.sum() / (num_items if num_items is not None else half)
        return loss, _dpo_stats(chosen_r, rejected_r, policy[:half].detach(), policy[half:].detach())

    def chunked(
        settings, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference
    ):
        pairs = int(batch["num_sequences"]) // 2
        loss, (_, chosen_r, rejected_r, policy) = C.dpo_family_loss(
            hidden,
            weight,
            bias,
            targets,
            seq_index,
            pairs,
            reference(),
            beta=settings.beta,
            loss_type=loss_type,
            length_average=length_average,
            num_items=num_items,
            chunk_size=chunk_size,
        )
        return loss, _dpo_stats(chosen_r, rejected_r, policy[:pairs], policy[pairs:])

    return plain, chunked


def _dpo_spec(name: str, loss_type: str, summary: str, length_average: bool = False) -> LossSpec:
    plain, chunked = _dpo_family(loss_type, length_average)
    return LossSpec(
        name,
        "pairwise",
        needs_reference=True,
        settings_type=L.DPOSettings,
        normalised_by="pairs",
        plain=plain,
        chunked=chunked,
        length_average=length_average,
        shares_prefix=True,
        summary=summary,
    )


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "pairwise_cringe",
            "pairwise",
            needs_reference=False,
            settings_type=L.PairwiseCringeSettings,
            normalised_by="tokens",
            plain=_pairwise_cringe_plain,
            chunked=_pairwise_cringe_chunked,
            shares_prefix=True,
            summary="cross-entropy on the chosen answer plus binary Cringe on the rejected one, gated by how "
            "far the model still prefers it (Xu et al. 2023)",
        ),
        LossSpec(
            "binary_cringe",
            "binary",
            needs_reference=False,
            settings_type=L.BinaryCringeSettings,
            normalised_by="tokens",
            plain=_binary_cringe_plain,
            chunked=_binary_cringe_chunked,
            summary="cross-entropy on good answers; on bad ones, each token contrasted with a top-k sample of the "
            "model's own (Adolphs et al. 2022)",
        ),
        _dpo_spec("dpo", "sigmoid", "direct preference optimisation (Rafailov et al. 2023)"),
        _dpo_spec(
            "ipo", "ipo", "IPO: a squared loss on length-averaged log-ratios (Azar et al. 2023)", length_average=True
        ),
        _dpo_spec("hinge", "hinge", "the hinge loss on DPO's log-ratio margin (SLiC)"),
        LossSpec(
            "sft",
            "sft",
            needs_reference=False,
            settings_type=L.SFTSettings,
            normalised_by="tokens",
            plain=_sft_plain,
            chunked=_sft_chunked,
            summary="cross-entropy on the (chosen or good) completion",
        ),
    )
}


def loss_spec(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise UserError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}") from None


def setting_fields() -> dict[str, dataclasses.Field]:
    """Every loss setting by name, across the losses (a name several losses read, such as alpha, is listed once;
    its default is each loss's own). `CringeConfig` and the model card take their names and help from here."""
    out: dict[str, dataclasses.Field] = {}
    for spec in LOSSES.values():
        for f in dataclasses.fields(spec.settings_type):
            out.setdefault(f.name, f)
    return out


def setting_defaults(name: str) -> str:
    """'0.2 for pairwise_cringe, 1.0 for binary_cringe': each loss's default of one setting, for help texts."""
    by_loss = {}
    for spec in LOSSES.values():
        for f in dataclasses.fields(spec.settings_type):
            if f.name == name:
                by_loss.setdefault(repr(f.default), []).append(spec.name)
    return ", ".join(f"{default} for {'/'.join(names)}" for default, names in by_loss.items())


@dataclass(frozen=True)
class ExternalMethod:
    """A method another library trains (its own trainer and config), named where ours are (the demo, model cards)."""

    name: str
    settings: tuple[str, ...]  # the fields of its trainer's config a model card lists
    summary: str


EXTERNAL_METHODS: dict[str, ExternalMethod] = {
    "rloo": ExternalMethod(
        "rloo",
        settings=("beta", "num_generations"),
        summary="REINFORCE leave-one-out (Ahmadian et al. 2024), trained by TRL's RLOOTrainer",
    ),
    "grpo": ExternalMethod(
        "grpo",
        settings=("beta", "num_generations", "loss_type", "learning_rate"),
        summary="group relative policy optimisation (Shao et al. 2024), trained by TRL's GRPOTrainer",
    ),
}


def method_of(args) -> tuple[str, dict]:
    """(method name, {setting: value}) of a trainer's arguments: a `CringeConfig` names its loss and its typed
    settings; another library's config (TRL's RLOOConfig) is named by its class and lists what
    `EXTERNAL_METHODS` says of it, or nothing when it is unknown here."""
    settings = getattr(args, "loss_settings", None)
    if settings is not None:
        return args.loss, dataclasses.asdict(settings)
    name = type(args).__name__.removesuffix("Config").lower()
    external = EXTERNAL_METHODS.get(name)
    return name, {k: getattr(args, k) for k in external.settings if hasattr(args, k)} if external else {}
