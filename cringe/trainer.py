"""CringeConfig and CringeTrainer: Hugging Face `Trainer` with the losses of `cringe.losses`.

The training loop is transformers' own (optimiser, schedule, checkpoints, resume, accelerate/DDP/FSDP/DeepSpeed,
report_to). What this file adds is `compute_loss`, the loss normalisation that makes gradient accumulation and
data parallelism equal one large batch, the reference log-probs for the DPO family, and the logged statistics.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments

from cringe import chunked as C
from cringe import losses as L
from cringe import prefix_sharing as P
from cringe.data import Collator, PreparedData, prepare
from cringe.denormals import flush_denormals
from cringe.errors import UserError
from cringe.optim_in_backward import OptimizerInBackward
from cringe.registry import LOSSES, loss_spec, setting_defaults, setting_fields

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training diverged (a nan or inf loss or weight): stopped at that step, before anything is saved from it."""


def _loss_setting(name: str):
    """A loss setting as a training argument: unset (None) means the loss's own default, which lives in its settings
    dataclass (cringe.losses, asked through cringe.registry), as do its help and choices."""
    setting = setting_fields()[name]
    metadata = {**setting.metadata, "help": f"{setting.metadata['help']} (default: {setting_defaults(name)})"}
    if isinstance(setting.default, bool):  # `--detach_gate` alone means true, as for a plain bool field
        metadata.update(nargs="?", const=True)
    return field(default=None, metadata=metadata)


@dataclass
class CringeConfig(TrainingArguments):
    """Training arguments plus the loss and its settings (formulas: docs/design.md, section 1). A loss setting left
    unset takes the loss's default (cringe.losses.PairwiseCringeSettings and the others); `loss_settings` is the
    typed result the loss reads."""

    loss: str = field(
        default="pairwise_cringe", metadata={"help": f"one of {', '.join(LOSSES)}", "choices": tuple(LOSSES)}
    )
    alpha: float | None = _loss_setting("alpha")
    k: int | None = _loss_setting("k")
    margin: float | None = _loss_setting("margin")
    temperature: float | None = _loss_setting("temperature")
    margin_on: str | None = _loss_setting("margin_on")
    detach_gate: bool | None = _loss_setting("detach_gate")
    detach_positive: bool | None = _loss_setting("detach_positive")
    beta: float | None = _loss_setting("beta")
    max_prompt_length: int | None = field(default=512, metadata={"help": "longer prompts are an error (or skipped)"})
    max_completion_length: int | None = field(default=512, metadata={"help": "longer completions are cut, without EOS"})
    chunked_loss: bool | None = field(
        default=None,
        metadata={
            "help": "fuse the LM head into the loss and chunk over tokens (cringe.chunked): "
            "no [tokens, vocab] logits tensor; same values and gradients. "
            "Default (unset): on wherever the model supports it"
        },
    )
    chunk_size: int = field(default=1024, metadata={"help": "tokens per chunk with chunked_loss"})
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "pack each batch into one row with position_ids (no pad tokens); "
            "needs chunked_loss and a model whose attention honours packed position_ids"
        },
    )
    prefix_sharing: bool | None = field(
        default=None,
        metadata={
            "help": "pairwise losses: one sequence per pair, [prompt | chosen | rejected], so the prompt runs "
            "once (cringe.prefix_sharing); same values and gradients. Default (unset): on for the pairwise "
            "losses wherever the model supports it; false turns it off",
            "nargs": "?",
            "const": True,
        },
    )
    precompute_ref_logps: bool = field(
        default=False,
        metadata={"help": "DPO family: one pass of the reference before training, then no reference model in memory"},
    )
    optimizer_in_backward: bool = field(
        default=False,
        metadata={
            "help": "experimental: step each parameter inside backward as soon as its gradient "
            "exists and free it (cringe.optim_in_backward). Needs max_grad_norm=0, "
            "gradient_accumulation_steps=1 and one process. Lowered no peak measured so "
            "far (docs/performance.md)"
        },
    )
    allow_single_label: bool = field(
        default=False,
        metadata={
            "help": "binary_cringe: train even when every row has the same label (all good: plain SFT; all bad: "
            "the Cringe term with nothing to anchor it), which is otherwise refused"
        },
    )
    on_invalid: str = field(default="error", metadata={"help": "bad data rows: 'error' stops, 'skip' drops and counts"})
    dataset_num_proc: int | None = field(
        default=None,
        metadata={
            "help": "processes that validate and tokenise a datasets.Dataset (TRL's name); "
            "default: one per CPU, at most 8, for 2,000 rows or more (cringe.data)"
        },
    )
    logging_steps: float = field(default=10, metadata={"help": "log every N optimiser steps"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept False: rows carry token ids"})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "every trainable parameter gets a gradient; the extra DDP graph walk is waste"}
    )

    def __post_init__(self):
        spec = loss_spec(self.loss)  # a known loss, or the error that lists them
        spec.make_settings(self)  # checked now: a bad value is named before any work
        ignored = sorted(k for k in setting_fields() if k not in spec.settings and getattr(self, k) is not None)
        if ignored:
            for other in LOSSES.values():  # a bad value is named even where this loss does not read it
                other.make_settings({k: getattr(self, k) for k in ignored})
            reads = ", ".join(spec.settings) or "no setting"
            logger.warning("loss %s does not read %s (it reads %s): ignored", self.loss, ", ".join(ignored), reads)
        if self.padding_free and self.chunked_loss is False:
            raise UserError("padding_free needs chunked_loss: the packed batch is scored token by token")
        if self.optimizer_in_backward:
            _check_optimizer_in_backward(self)
        super().__post_init__()

    @property
    def loss_settings(self):
        """The loss's typed settings (cringe.losses): the fields given here over the loss's defaults."""
        return loss_spec(self.loss).make_settings(self)


def wants_prefix_sharing(loss: str, setting: bool | None) -> bool:
    """Whether a run of `loss` with `prefix_sharing: setting` shares each pair's prompt: where the loss reads two
    answers per pair and sharing is not turned off. (The trainer still falls back where the model cannot.)"""
    return setting is not False and loss_spec(loss).shares_prefix


@dataclass
class LoraArguments:
    """LoRA adapters through peft (`use_peft`); the saved model has them merged."""

    use_peft: bool = field(default=False, metadata={"help": "train LoRA adapters instead of every weight (needs peft)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "default: peft's choice for the model"}
    )

    def peft_config(self):
        """peft's LoraConfig for a causal LM, or None without use_peft."""
        if not self.use_peft:
            return None
        try:
            from peft import LoraConfig
        except ImportError:
            raise UserError("use_peft needs peft: pip install peft") from None
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
            task_type="CAUSAL_LM",
        )


def _check_both_labels(data: PreparedData) -> None:
    """Binary Cringe learns from the contrast of good and bad rows: with one label only it silently becomes another
    objective, so that is refused unless asked for."""
    labels = {bool(row["label"]) for row in data.rows}
    if len(labels) != 1:
        return
    if labels == {True}:
        what = "every training row is labelled good, so binary_cringe would be plain SFT"
    else:
        what = "every training row is labelled bad, so binary_cringe would push completions down with nothing to keep"
    raise UserError(f"{what}; check the labels, or set allow_single_label: true (--allow_single_label) to train anyway")


def _check_optimizer_in_backward(args) -> None:
    # Each of these needs every gradient at once, which optimizer_in_backward never has.
    if args.max_grad_norm:
        raise UserError(
            f"optimizer_in_backward cannot clip the global gradient norm (each parameter is stepped "
            f"before the others' gradients exist): set max_grad_norm=0 (got {args.max_grad_norm})"
        )
    if args.gradient_accumulation_steps != 1:
        raise UserError(
            f"optimizer_in_backward steps on every backward pass, so it cannot accumulate gradients: "
            f"set gradient_accumulation_steps=1 (got {args.gradient_accumulation_steps})"
        )
    if args.fp16:
        raise UserError(
            "optimizer_in_backward does not work with fp16 loss scaling (the gradients would be "
            "applied before they are unscaled): use bf16"
        )
    if args.deepspeed or args.fsdp:
        raise UserError("optimizer_in_backward does not work with DeepSpeed or FSDP, which own the optimiser step")


def whole_head_weight(model, head) -> torch.Tensor:
    """The LM-head weight the chunked loss multiplies by. Under FSDP2 the root may have resharded its parameters
    after forward, leaving the head a sharded DTensor: the root is then unsharded again (FSDP2's own all-gather),
    so the loss reads the whole weight, its gradient lands on the unsharded parameter, and FSDP reduce-scatters
    it with every other gradient. A head that stays sharded is refused rather than used."""

    weight = head.weight
    if isinstance(weight, DTensor):
        owners = [m for m in model.modules() if isinstance(m, FSDPModule) and any(p is weight for p in m.parameters())]
        for owner in owners:
            owner.unshard()
        weight = head.weight
    if isinstance(weight, DTensor) or hasattr(weight, "ds_id") or weight.numel() == 0:
        raise UserError(
            "the LM head weight is sharded (FSDP DTensor or DeepSpeed ZeRO-3) where the chunked loss "
            "reads it: set chunked_loss=False"
        )
    return weight


class CringeTrainer(Trainer):
    """`Trainer` for Pairwise Cringe, binary Cringe, DPO/IPO/hinge and SFT.

    train_dataset may be anything `cringe.data.prepare` loads (a path, a `datasets` name or Dataset, a list of
    dicts) or an already prepared `PreparedData`. DPO-family losses use `ref_model` when given, else a frozen
    copy of the starting model (with peft: the base model with adapters disabled), or, with
    `precompute_ref_logps`, one reference pass before training and no reference model afterwards. Pairs train as
    one [prompt | chosen | rejected] row each where the loss and the models allow (`prefix_sharing`,
    cringe.prefix_sharing); the reference pass runs on the same rows.
    """

    # compute_loss divides by the global item count itself (see `_get_num_items_in_batch`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: CringeConfig,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        ref_model=None,
        peft_config=None,
        **kwargs,
    ):
        if processing_class is None:
            raise ValueError("CringeTrainer needs the tokenizer as processing_class")
        flush_denormals()
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.loss_spec = loss_spec(args.loss)
        self.loss_settings = args.loss_settings
        prep = dict(
            kind=self.loss_spec.data_kind,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
            on_invalid=args.on_invalid,
            num_proc=args.dataset_num_proc,
        )
        if train_dataset is not None and not isinstance(train_dataset, PreparedData):
            train_dataset = prepare(train_dataset, processing_class, **prep)
        if eval_dataset is not None and not isinstance(eval_dataset, PreparedData):
            eval_dataset = prepare(eval_dataset, processing_class, **prep)
        if train_dataset is not None and self.loss_spec.data_kind == "binary" and not args.allow_single_label:
            _check_both_labels(train_dataset)
        if processing_class.pad_token_id is None:
            raise UserError("the tokenizer has no pad token; set tokenizer.pad_token (EOS is fine)")
        self.share_prefix = self._resolve_prefix_sharing(args, model, ref_model)
        kwargs.setdefault(
            "data_collator",
            Collator(processing_class.pad_token_id, padding_free=args.padding_free, share_prefix=self.share_prefix),
        )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        model_reason, engine_reason = C.chunked_unsupported_reason(self.model), self._sharded_head_engine()
        unsupported = model_reason or engine_reason
        if args.chunked_loss and unsupported:
            raise UserError(f"chunked_loss: {unsupported}")
        # bench/train_step.py measured the chunked path faster and leaner than the plain one on every model it
        # ran (docs/performance.md): it is the default wherever the model allows it.
        self.use_chunked = not unsupported if args.chunked_loss is None else args.chunked_loss
        if engine_reason and not model_reason and args.chunked_loss is None:  # the engine, not the model: say so
            logger.warning("chunked loss off, the plain path is used: %s", engine_reason)
        if args.padding_free and not self.use_chunked:
            raise UserError(f"padding_free needs the chunked loss, which this model cannot use: {unsupported}")
        if args.optimizer_in_backward and args.world_size > 1:
            raise UserError(
                "optimizer_in_backward needs a single process: DDP averages gradients after backward, "
                "after this optimiser has already applied them"
            )
        self._micro = (-1, 0)  # (global_step, micro-batch index within it): seeds the Cringe sampling
        self.ref_model = None
        if self.loss_spec.needs_reference:
            self._setup_reference(ref_model)

    def _resolve_prefix_sharing(self, args: CringeConfig, model, ref_model) -> bool:
        """Whether each pair runs as one [prompt | chosen | rejected] row (cringe.prefix_sharing).
        bench/prefix_sharing.py measured it faster on every shape it ran (docs/performance.md), so unset means on
        wherever the loss and the models can take it; the policy and any reference model given run the same
        batches, so both must."""
        if not wants_prefix_sharing(args.loss, args.prefix_sharing):
            if args.prefix_sharing:
                logger.warning("prefix_sharing off: loss %s has one answer per row", args.loss)
            return False
        models = [("the model", model)]
        if self.loss_spec.needs_reference and ref_model is not None:
            models.append(("the reference model", ref_model))
        for what, candidate in models:
            ok, reason = P.can_share_prefix(candidate)
            if not ok:
                log = logger.warning if args.prefix_sharing else logger.info
                log("prefix sharing off, the plain path is used: %s: %s", what, reason)
                return False
        return True

    def create_optimizer(self, model=None):
        if not self.args.optimizer_in_backward or self.optimizer is not None:
            return super().create_optimizer(model)

        # Trainer builds the groups (weight decay, the optim choice, optimizer_cls_and_kwargs); we take them over.
        self.optimizer = OptimizerInBackward(super().create_optimizer(model))
        return self.optimizer

    # ----- divergence guard ----------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's step, stopped at the first nan/inf loss. Trainer itself would log the previous losses'
        mean in its place (logging_nan_inf_filter) and train on, saving a model full of nan."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss)).any().float()
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad.reshape(1), reduction="sum")  # every rank stops, none waits
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1}: training diverged; lower "
                "the learning rate (or check the data and the loss settings); nothing from this step is saved"
            )
        return loss

    def train(self, *args, **kwargs):
        """Trainer.train, then a check that no weight became nan/inf on the last update (after its loss)."""
        output = super().train(*args, **kwargs)
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"after {self.state.global_step} steps {len(bad)} weight tensors hold nan or "
                f"inf (e.g. {bad[0]}): training diverged; lower the learning rate"
            )
        return output

    # ----- reference log-probs (DPO family) ------------------------------------------------------------------

    def _is_peft(self, model) -> bool:
        return hasattr(self.accelerator.unwrap_model(model), "disable_adapter")

    def _setup_reference(self, ref_model):
        if self.args.precompute_ref_logps:
            for dataset in (self.train_dataset, self.eval_dataset):
                if dataset is not None:
                    self._precompute_reference(dataset, ref_model)
            return
        if ref_model is None and self._is_peft(self.model):
            return  # the reference is the same model with adapters disabled
        if ref_model is None:
            ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        ref_model.eval().requires_grad_(False)
        self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    @torch.no_grad()
    def _reference_logps(self, batch, model=None) -> torch.Tensor:
        model = model if model is not None else self.ref_model
        if model is None:  # peft: the base model is the reference
            unwrapped = self.accelerator.unwrap_model(self.model)
            with unwrapped.disable_adapter():
                return self._sequence_logps(unwrapped, batch)
        return self._sequence_logps(model, batch)

    def _precompute_reference(self, dataset: PreparedData, ref_model):
        """One no-grad pass of the reference over the dataset; the result is cached on the rows."""

        model = ref_model if ref_model is not None else (None if self._is_peft(self.model) else self.model)
        if model is not None:
            model = model.to(self.args.device)
            was_training = model.training
            model.eval()
        batch_size = self.args.per_device_eval_batch_size
        for start in tqdm(
            range(0, len(dataset), batch_size), desc="reference log-probs", disable=not self.is_world_process_zero()
        ):
            rows = dataset.rows[start : start + batch_size]
            batch = {k: v.to(self.args.device) for k, v in self.data_collator(rows).items()}
            logps = self._reference_logps(batch, model).view(2, -1).T.tolist()
            for row, pair in zip(rows, logps):
                row["ref_logps"] = pair
        if model is not None and was_training:
            model.train()

    # ----- forward and loss ------------------------------------------------------------------------------------

    def _forward(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [S, T-1, V] and the labels they predict [S, T-1] (shared rows: [S, L, V] and [S, L] over the
        answers only, the same sequences in the same order)."""
        if P.is_shared_batch(batch):
            return P.answer_logits(model, batch, self.accelerator.unwrap_model(model), ignore_index=L.IGNORE_INDEX)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return logits[:, :-1], batch["labels"][:, 1:]

    def _forward_hidden(self, model, batch):
        """For the chunked losses: final hidden states at the positions that predict a completion token.

        Returns (hidden [N, D], targets [N], seq_index [N], head weight [V, D], head bias [V] | None). The model
        is called through its wrapper (DDP hooks stay intact) with `logits_to_keep` empty, so it computes no
        logits; a forward hook on the decoder captures its output.
        """
        lm = C.causal_lm(self.accelerator.unwrap_model(model))
        head = lm.get_output_embeddings()
        if P.is_shared_batch(batch):
            hidden, targets, seq_index = P.answer_hidden(model, batch, lm)
            return hidden, targets, seq_index, whole_head_weight(lm, head), head.bias
        packed = "position_ids" in batch
        inputs = {"position_ids": batch["position_ids"]} if packed else {"attention_mask": batch["attention_mask"]}
        hidden, targets, mask = C.completion_hidden(
            model, lm.get_decoder(), batch["input_ids"], batch["labels"], **inputs
        )
        if packed:
            seq_index = batch["seq_id"][:, 1:][mask]
        else:
            seq_index = C.row_of_position(mask)
        return hidden, targets, seq_index, whole_head_weight(lm, head), head.bias

    def _sharded_head_engine(self) -> str | None:
        """Why the chunked path cannot read the LM head here: the engine this Trainer runs under shards it (FSDP1,
        or DeepSpeed ZeRO-3) and the chunked loss reads the head's weight outside the wrapped forward, where such an
        engine holds only this rank's shard. FSDP2 is gathered (whole_head_weight); ZeRO-1/2 and DDP keep whole
        parameters. The plain path is used instead, with a warning."""
        if getattr(self, "is_fsdp_enabled", False):
            plugin = self.accelerator.state.fsdp_plugin
            if getattr(plugin, "fsdp_version", 1) != 2:  # FSDP2 is handled: whole_head_weight unshards the root
                return "the LM head is flattened into FSDP1's sharded parameters (use fsdp_version: 2)"
        if getattr(self, "is_deepspeed_enabled", False):
            plugin = self.accelerator.state.deepspeed_plugin
            if plugin is not None and plugin.zero_stage == 3:
                return "the LM head is partitioned by DeepSpeed ZeRO-3 (the chunked loss reads the whole head weight)"
        return None

    def _sequence_logps(self, model, batch) -> torch.Tensor:
        if self.use_chunked:
            hidden, targets, seq_index, weight, bias = self._forward_hidden(model, batch)
            total, count = C.sequence_logps(
                hidden, weight, bias, targets, seq_index, int(batch["num_sequences"]), chunk_size=self.args.chunk_size
            )
        else:
            logits, labels = self._forward(model, batch)
            total, count = L.sequence_logps(logits, labels)
        return total / count.clamp_min(1) if self.loss_spec.length_average else total

    def _generator(self, device) -> torch.Generator:
        # Seeded from (seed, process, optimiser step, micro-batch): reproducible, different on every rank, and
        # a resumed run samples exactly what the uninterrupted run would have, with no state to checkpoint.
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        seed = (self.args.seed * 1_000_003 + self.args.process_index * 7_919 + step * 101 + micro) % (2**63)
        return torch.Generator(device=device).manual_seed(seed)

    def _count_items(self, batch) -> torch.Tensor:
        """What the loss is normalised by: pairs for the DPO family, completion tokens otherwise."""
        if self.loss_spec.normalised_by == "pairs":
            return batch["num_sequences"] // 2
        if P.is_shared_batch(batch):
            return torch.tensor(batch["answer_targets"].numel())
        return (batch["labels"][:, 1:] != L.IGNORE_INDEX).sum()

    def _get_num_items_in_batch(self, batch_samples, device):
        count = sum(self._count_items(b) for b in batch_samples).to(device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of `args.loss` (cringe.registry), through its chunked implementation where the model allows."""
        training = model.training
        spec, settings, args = self.loss_spec, self.loss_settings, self.args
        common = dict(num_items=num_items_in_batch, reference=lambda: self._batch_reference_logps(inputs))
        if self.use_chunked:
            hidden, targets, seq_index, weight, bias = self._forward_hidden(model, inputs)
            loss, stats = spec.chunked(
                settings,
                hidden,
                weight,
                bias,
                targets,
                seq_index,
                inputs,
                generator=self._generator(hidden.device) if training else None,
                chunk_size=args.chunk_size,
                **common,
            )
            outputs = {}
        else:
            logits, labels = self._forward(model, inputs)
            loss, stats = spec.plain(
                settings,
                logits,
                labels,
                inputs,
                generator=self._generator(logits.device) if training else None,
                **common,
            )
            outputs = {"logits": logits}
        self._record("train" if training else "eval", stats)
        if num_items_in_batch is not None:
            # Every rank divides by the global count; DDP then averages gradients over ranks, so multiply back.
            loss = loss * float(self.accelerator.num_processes)
        return (loss, outputs) if return_outputs else loss

    def _batch_reference_logps(self, batch) -> torch.Tensor:
        return batch["ref_logps"] if "ref_logps" in batch else self._reference_logps(batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Preference evaluation is the loss and its statistics; gathering [S, T, V] logits would only cost memory.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ----- logging -------------------------------------------------------------------------------------------

    def _record(self, mode: str, stats: dict[str, torch.Tensor]):
        for key, value in stats.items():
            value = value.detach().float().mean()
            if self.args.world_size > 1:
                value = self.accelerator.gather(value.reshape(1)).mean()
            self._metrics[mode][key].append(value.item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)
