"""Every training loss, and what it declares about itself: the data it needs, whether it needs a reference model,
which settings it reads, how its loss is normalised, and its two implementations (plain logits, and the chunked
path that never builds the [tokens, vocab] logits). The trainer, the loop, the demo and the model card ask a
`LossSpec` instead of comparing names.

Both implementations take the batch the trainer built and return (loss, stats): the loss already divided by the
batch's item count (`num_items`, global under gradient accumulation and DDP), and per-sequence statistics for
the log. `reference()` returns the reference model's sequence log-probs, computed only when a loss asks.
"""

from __future__ import annotations

from collections.abc import Callable
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
    settings: tuple[str, ...]  # the CringeConfig fields it reads (the model card lists them)
    normalised_by: str  # 'pairs' or 'tokens': what the loss of a batch is divided by
    plain: Callable  # (args, logits, labels, batch, *, generator, num_items, reference) -> (loss, stats)
    chunked: Callable  # (args, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items,
    #                     chunk_size, reference) -> (loss, stats)
    length_average: bool = False  # sequence log-probs divided by their length (IPO)
    summary: str = ""


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


def _pairwise_cringe_settings(args) -> dict:
    return dict(
        alpha=args.alpha,
        k=args.k,
        margin=args.margin,
        temperature=args.temperature,
        margin_on=args.margin_on,
        detach_gate=args.detach_gate,
        detach_positive=args.detach_positive,
    )


def _pairwise_cringe_plain(args, logits, labels, batch, *, generator, num_items, reference):
    half = logits.shape[0] // 2
    out = L.pairwise_cringe_loss(
        logits[:half],
        labels[:half],
        logits[half:],
        labels[half:],
        generator=generator,
        num_items=num_items,
        **_pairwise_cringe_settings(args),
    )
    return out.loss, _pairwise_stats(out.stats)


def _pairwise_cringe_chunked(
    args, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference
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
        **_pairwise_cringe_settings(args),
    )
    return loss, _pairwise_stats(stats)


# ----- binary Cringe -----------------------------------------------------------------------------------------------


def _binary_cringe_plain(args, logits, labels, batch, *, generator, num_items, reference):
    positive = batch["is_positive"]
    out = L.binary_cringe_loss(
        logits,
        labels,
        positive,
        alpha=args.alpha,
        k=args.k,
        detach_positive=args.detach_positive,
        generator=generator,
        num_items=num_items,
    )
    stats = {"positive_frac": positive.float(), "tokens": out.stats["n_tokens"].float()}
    for name, selected in (("positive", positive), ("negative", ~positive)):
        if selected.any():
            stats[f"logps/{name}"] = out.stats["logps"][selected]
    return out.loss, stats


def _binary_cringe_chunked(
    args, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference
):
    positive = batch["is_positive"]
    loss = C.binary_cringe_loss(
        hidden,
        weight,
        bias,
        targets,
        positive[seq_index],
        alpha=args.alpha,
        k=args.k,
        detach_positive=args.detach_positive,
        generator=generator,
        num_items=num_items,
        chunk_size=chunk_size,
    )
    tokens = torch.bincount(seq_index, minlength=int(batch["num_sequences"])).float()
    return loss, {"positive_frac": positive.float(), "tokens": tokens}


# ----- SFT ---------------------------------------------------------------------------------------------------------


def _sft_plain(args, logits, labels, batch, *, generator, num_items, reference):
    out = L.sft_loss(logits, labels, num_items=num_items)
    return out.loss, {"logps": out.stats["logps"], "tokens": out.stats["n_tokens"].float()}


def _sft_chunked(args, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference):
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
    def plain(args, logits, labels, batch, *, generator, num_items, reference):
        total, count = L.sequence_logps(logits, labels)
        policy = total / count.clamp_min(1) if length_average else total
        ref = reference()
        half = policy.shape[0] // 2
        losses, chosen_r, rejected_r = L.dpo_loss(
            policy[:half], policy[half:], ref[:half], ref[half:], beta=args.beta, loss_type=loss_type
        )
        loss = losses.sum() / (num_items if num_items is not None else half)
        return loss, _dpo_stats(chosen_r, rejected_r, policy[:half].detach(), policy[half:].detach())

    def chunked(args, hidden, weight, bias, targets, seq_index, batch, *, generator, num_items, chunk_size, reference):
        pairs = int(batch["num_sequences"]) // 2
        loss, (_, chosen_r, rejected_r, policy) = C.dpo_family_loss(
            hidden,
            weight,
            bias,
            targets,
            seq_index,
            pairs,
            reference(),
            beta=args.beta,
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
        settings=("beta", "precompute_ref_logps"),
        normalised_by="pairs",
        plain=plain,
        chunked=chunked,
        length_average=length_average,
        summary=summary,
    )


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "pairwise_cringe",
            "pairwise",
            needs_reference=False,
            settings=("alpha", "k", "margin", "temperature", "margin_on", "detach_gate", "detach_positive"),
            normalised_by="tokens",
            plain=_pairwise_cringe_plain,
            chunked=_pairwise_cringe_chunked,
            summary="cross-entropy on the chosen answer plus binary Cringe on the rejected one, gated by how "
            "far the model still prefers it (Xu et al. 2023)",
        ),
        LossSpec(
            "binary_cringe",
            "binary",
            needs_reference=False,
            settings=("alpha", "k", "detach_positive"),
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
            settings=(),
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
