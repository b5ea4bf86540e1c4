"""`cringe iterate`'s configuration: IterateConfig (every field a YAML key and a flag; sections for the reward
sources, sampling, training, vLLM and accelerate), what of it decides results (the resume check), and how it is
read from a YAML file plus command-line overrides."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cringe.config import (
    device_field,
    dtype_field,
    flat_dataclass,
    make_parser,
    parse_with_sections,
    read_yaml,
    trust_remote_code_field,
)
from cringe.errors import UserError
from cringe.generation import SamplingConfig, resolve_backend
from cringe.loop import rundir
from cringe.loop.tracking import check_trackers
from cringe.models import cpu_prefers_bf16, default_dtype, resolve_device
from cringe.registry import LOSSES, loss_spec
from cringe.rewards import check_reward_spec
from cringe.trainer import CringeConfig, LoraArguments, wants_prefix_sharing


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@functools.cache
def _backend_in(python: str) -> str:
    """What `backend: auto` resolves to under another interpreter (the sampling stage's). Cached: the probe starts
    a Python that imports torch, and the loop asks before every sampling stage."""

    probe = "from cringe.generation import resolve_backend; print(resolve_backend('auto'))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(
            f"sampling_python: {python} cannot import cringe ({out.stderr.strip().splitlines()[-1:]}); "
            "install the project there too (`make vllm` does)"
        )
    return out.stdout.strip()


@dataclass
class IterateConfig:
    """One iterative run. Every field is a YAML key and a flag of `cringe iterate`; `reward`, `eval_reward`,
    `sampling` and `train` are sections (`--train.learning_rate 1e-5`)."""

    model: str = field(metadata=_help("the initial policy M_0: hub id, local folder or packaged spec"))
    prompts: str = field(metadata=_help("training prompts (any accepted data format; the prompt column is used)"))
    output_dir: str = field(metadata=_help("the run directory; rerun the same command to resume"))
    reward: dict = field(default=None, metadata=_help("reward source: {type: callable|model|judge|instructions, ...}"))
    rounds: int = field(default=3, metadata=_help("rounds of sample -> score -> pair -> train"))
    loss: str = field(
        default="pairwise_cringe",
        metadata=_help(
            "training loss; each round trains on what it needs (cringe.registry): best-vs-worst pairs, threshold-labelled "
            "samples (binary_cringe), or each prompt's best sample (sft: rejection-sampling fine-tuning)",
            choices=tuple(LOSSES),
        ),
    )
    sampling: dict = field(default_factory=dict, metadata=_help("cringe.generation.SamplingConfig fields"))
    min_gap: float = field(default=0.0, metadata=_help("drop prompts whose best-worst reward gap is below this"))
    binary_threshold: float | None = field(
        default=None, metadata=_help("binary_cringe: good when score >= threshold (default: above the round's mean)")
    )
    drop_truncated: bool = field(default=False, metadata=_help("never train on completions cut at max_new_tokens"))
    mix_previous: bool = field(default=False, metadata=_help("train round k on the rows of rounds 1..k"))
    dpo_reference: str = field(
        default="previous",
        metadata=_help("DPO family reference: the round's start or M_0", choices=("previous", "initial")),
    )
    train: dict = field(default_factory=dict, metadata=_help("CringeConfig fields, plus LoRA: use_peft, lora_r, ..."))
    eval_prompts: str | None = field(default=None, metadata=_help("held-out prompts; none: no evaluation"))
    eval_reward: dict | None = field(default=None, metadata=_help("reward source for evaluation (default: reward)"))
    eval_samples: int = field(default=1, metadata=_help("samples per held-out prompt"))
    eval_every: int = field(default=1, metadata=_help("evaluate every k-th round (and always the last)"))
    max_prompts: int | None = None
    first_round_from: str | None = field(
        default=None,
        metadata=_help(
            "a folder with samples.jsonl and scores.jsonl of M_0 on these prompts (as `cringe sample` / `cringe score` "
            "write them): round 1 trains on their rows instead of sampling and scoring again"
        ),
    )
    baseline_from: str | None = field(
        default=None,
        metadata=_help(
            "another run directory with M_0's held-out samples and scores on the same eval_prompts: compare against "
            "them instead of sampling M_0 again"
        ),
    )
    # Fresh prompts each round: round k samples prompts [(k-1)*m, k*m) of the list (wrapping around), so R rounds
    # of m prompts label as many samples as one round over R*m prompts. None: every round uses every prompt.
    round_prompts: int | None = field(default=None, metadata=_help("prompts per round, fresh each round"))
    max_eval_prompts: int | None = None
    max_prompt_length: int = 512
    skip_invalid_prompts: bool = field(
        default=False,
        metadata=_help(
            "skip (and count) prompts longer than max_prompt_length or otherwise invalid, instead of stopping: for "
            "large public prompt sets such as UltraFeedback's"
        ),
    )
    device: str = device_field()
    dtype: str | None = dtype_field(
        "weights for training and evaluation (default: bfloat16 on a GPU, float32 on a CPU)"
    )
    sampling_dtype: str | None = field(
        default=None,
        metadata=_help(
            "weights for sampling (default: dtype; on a CPU without a dtype given, bfloat16 where the CPU computes it "
            "natively (AMX, AVX512-BF16), float32 elsewhere: bench/results/cpu_dtype-*.md)"
        ),
    )
    backend: str = field(
        default="auto",
        metadata=_help("sampler: auto = vLLM when installed with a GPU", choices=("auto", "transformers", "vllm")),
    )
    vllm: dict = field(
        default_factory=dict,
        metadata=_help(
            "vLLM engine options: tensor_parallel_size, gpu_memory_utilization, dtype, max_model_len, enforce_eager, ..."
        ),
    )
    sampling_python: str | None = field(
        default=None,
        metadata=_help(
            "the Python that runs each sampling stage (`cringe sample`), e.g. .venv-vllm/bin/python from `make vllm`: "
            "vLLM pins its own transformers, so it lives in an environment of its own; training stays in this one"
        ),
    )
    stage_processes: bool | None = field(
        default=None,
        metadata=_help(
            "run sampling and scoring as `cringe sample` / `cringe score` subprocesses, so their GPU memory is "
            "free before training (default: on with a GPU or vLLM, off on a CPU; always on with vLLM)"
        ),
    )
    accelerate: dict = field(
        default_factory=dict,
        metadata=_help(
            "train each round under `accelerate launch`: {config_file: FILE, num_processes: N, sample: false, ...}"
        ),
    )
    report_to: list[str] = field(
        default_factory=list,
        metadata=_help(
            "trackers for per-round evaluation and training curves: tensorboard, wandb (logs in <output_dir>/logs)"
        ),
    )
    run_name: str | None = field(default=None, metadata=_help("the tracker's run name (default: output_dir's name)"))
    seed: int = 0
    trust_remote_code: bool = trust_remote_code_field()

    def __post_init__(self):
        if self.reward is None:
            raise UserError("reward is required: a section {type: callable|model|judge|instructions, ...}")
        check_reward_spec(self.reward, "reward")
        if self.eval_reward is not None:
            check_reward_spec(self.eval_reward, "eval_reward")
        loss_spec(self.loss)
        if self.dpo_reference not in ("previous", "initial"):
            raise UserError("dpo_reference must be 'previous' or 'initial'")
        if self.rounds < 1:
            raise UserError("rounds must be >= 1")
        if self.eval_every < 1:
            raise UserError("eval_every must be >= 1")
        if self.round_prompts is not None and self.round_prompts < 1:
            raise UserError("round_prompts must be >= 1 (or null for every prompt in every round)")

        try:
            SamplingConfig(**self.sampling)  # validates the keys and values now, not rounds later
        except TypeError as err:
            raise UserError(f"sampling: {err}") from None
        owned = sorted({"loss", "output_dir", "report_to"} & set(self.train))
        if owned:
            raise UserError(
                f"train: {owned} are set by the loop (use the top-level keys loss / output_dir / report_to)"
            )

        check_trackers(self.report_to)
        config_file = self.accelerate.get("config_file")
        if config_file and not Path(config_file).is_file():
            raise UserError(f"accelerate.config_file: {config_file}: no such file")
        self.training_arguments(Path(self.output_dir) / "round-1")  # every train.* key and value checked now
        if self.sampling_python is not None:
            python = shutil.which(self.sampling_python)
            if python is None:
                raise UserError(
                    f"sampling_python: {self.sampling_python} is not an executable Python "
                    "(`make vllm` builds .venv-vllm/bin/python)"
                )
            self.sampling_python = str(Path(python).absolute())
        if not self.backend_in_sampling_python():
            self.check_backend()  # known here; otherwise where a run starts (IterativeRun.session)

    def prompt_errors(self) -> str:
        return "skip" if self.skip_invalid_prompts else "error"

    def backend_in_sampling_python(self) -> bool:
        """Whether the backend is what `auto` resolves to under sampling_python: a Python process tells, so it is
        asked where a run starts, not when a config is made."""
        return self.sampling_python is not None and self.backend == "auto"

    def check_backend(self) -> None:
        """vllm engine options need the vllm sampler. Starts sampling_python when backend_in_sampling_python."""
        if self.vllm and self.resolved_backend() != "vllm":
            raise UserError(
                f"vllm engine options {sorted(self.vllm)} given, but the sampler is "
                f"{self.resolved_backend()} (backend: {self.backend})"
            )

    def resolved_backend(self) -> str:
        if self.backend_in_sampling_python():
            return _backend_in(self.sampling_python)  # 'auto' means what is installed there, not here
        return resolve_backend(self.backend)

    def resolved_sampling_dtype(self) -> str | None:
        if self.sampling_dtype or self.dtype or self.resolved_device() != "cpu":
            return self.sampling_dtype or self.dtype
        return "bfloat16" if cpu_prefers_bf16() else "float32"

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    def use_stage_processes(self) -> bool:
        """vLLM always samples in a process of its own (its memory is only reliably back when the process ends)."""
        if self.sampling_python or self.accelerate.get("sample") or self.resolved_backend() == "vllm":
            return True
        if self.stage_processes is not None:
            return self.stage_processes
        return self.resolved_device().startswith("cuda")

    def training_settings(self, round_dir: Path, seed_offset: int = 0) -> dict:
        """A round's `cringe train` settings: the train section over the loop's defaults (CringeConfig and LoRA
        keys, flat, as the YAML of a `cringe train --config` would hold them)."""
        train = {
            "save_strategy": "epoch",
            "seed": self.seed + seed_offset,
            # A round whose labels are all good or all bad is the loop's to report (pairing), not a reason to stop.
            "allow_single_label": True,
            **self.train,
            "report_to": "none",
            "output_dir": str(round_dir / rundir.CHECKPOINTS),
            "loss": self.loss,
        }
        if self.resolved_device() == "cpu":
            train.setdefault("use_cpu", True)  # the Trainer would otherwise take a GPU the user kept out
            if not {"bf16", "fp16"} & set(train):
                # bf16 autocast over fp32 weights where the CPU has native bf16 (about 2x faster steps there);
                # emulated elsewhere, and slower than fp32 (cringe.models.cpu_prefers_bf16).
                train["bf16"] = cpu_prefers_bf16()
        return train

    def loss_settings(self):
        """The loss's typed settings (cringe.losses): the train section's loss keys over the loss's defaults."""
        return loss_spec(self.loss).make_settings(self.train)

    def training_arguments(self, round_dir: Path, seed_offset: int = 0):
        """(CringeConfig, LoraArguments) for a round: the train section over the loop's defaults."""
        return training_arguments(self.training_settings(round_dir, seed_offset))

    # Keys that do not change what a round computes: changing them on resume is allowed. (`device`, `backend` and
    # the number of training processes do change results, through what they resolve to: see `resolved`.)
    # first_round_from / baseline_from say where files come from while they are missing; once copied, the files
    # are the record (and are checked like any other).
    OPERATIONAL_KEYS = (
        "rounds",
        "output_dir",
        "device",
        "vllm",
        "sampling_python",
        "stage_processes",
        "report_to",
        "run_name",
        "accelerate",
        "first_round_from",
        "baseline_from",
    )
    # How a round's samples become training rows: checked round by round against what each round's pairs were
    # made with (pairing.json), so a round whose pairing kept nothing can be paired again with other settings.
    PAIRING_KEYS = ("min_gap", "binary_threshold", "drop_truncated")
    NOT_COMPARED = frozenset(OPERATIONAL_KEYS + PAIRING_KEYS)

    def resolved(self) -> dict:
        """What the machine-dependent defaults resolve to here: each changes results when it changes."""
        device = self.resolved_device()
        train = self.training_settings(Path(self.output_dir) / "round-1")
        return {
            "dtype": default_dtype(self.dtype, device),
            "sampling_dtype": default_dtype(self.resolved_sampling_dtype(), device),
            "train_precision": "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "fp32",
            "backend": self.resolved_backend(),
            "training_processes": self.training_processes(),
            # the loss's settings with its defaults filled in: a resume after a default changed is refused
            "loss_settings": dataclasses.asdict(self.loss_settings()),
            # one [prompt | chosen | rejected] row per pair (where the model can take it), or two rows: the same
            # values to float precision, recorded so a resume across a changed default shows it
            "prefix_sharing": "shared" if wants_prefix_sharing(self.loss, train.get("prefix_sharing")) else "plain",
        }

    def training_processes(self) -> int:
        """Processes each round trains on (the effective batch is per-device batch x this x accumulation)."""
        if not self.accelerate:
            return 1
        processes = self.accelerate.get("num_processes")
        config_file = self.accelerate.get("config_file")
        if processes is None and config_file:
            processes = read_yaml(config_file).get("num_processes")
        return int(processes or 1)

    def result_dict(self) -> dict:
        """The fields that decide what every round computes, less those at their defaults: a field added in a
        later version (its default keeping the old behaviour) leaves old runs' comparison unchanged."""
        defaults = IterateConfig.field_defaults()
        config = {**dataclasses.asdict(self), "train": compared_train(self.train, self.loss)}
        return {k: v for k, v in config.items() if k not in self.NOT_COMPARED and v != defaults.get(k, _NONE)}

    def pairing_settings(self) -> dict:
        return {k: getattr(self, k) for k in self.PAIRING_KEYS}

    @staticmethod
    def field_defaults() -> dict:
        out = {}
        for f in dataclasses.fields(IterateConfig):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def result_hash(self) -> str:
        summary = {"version": STATE_VERSION, "config": self.result_dict(), "resolved": self.resolved()}
        return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, saved: dict) -> list[str]:
        """What a run directory's state.json says its rounds were computed with, against this config: the keys
        that differ (empty: it may resume). A key that state.json lacks (a run of an earlier version) had its
        default; `resolved` is compared where the state recorded it."""
        defaults = IterateConfig.field_defaults()
        old = {k: v for k, v in saved["config"].items() if k not in self.NOT_COMPARED}
        if isinstance(old.get("train"), dict):
            old["train"] = compared_train(old["train"], old.get("loss", defaults["loss"]))
        new = self.result_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k, defaults.get(k)) != new.get(k, defaults.get(k)))
        resolved, was = self.resolved(), saved.get("resolved") or {}
        diff += sorted(
            f"{k} (resolved here: {resolved[k]}, was {was[k]})" for k in was if k in resolved and was[k] != resolved[k]
        )
        return diff


def training_arguments(train: dict):
    """(CringeConfig, LoraArguments) from flat training settings (IterateConfig.training_settings): what a round
    trains with, in this process or in a launched one (cringe.loop.executor.TrainJob)."""
    lora_keys = {f.name for f in dataclasses.fields(LoraArguments)}
    lora = LoraArguments(**{k: v for k, v in train.items() if k in lora_keys})
    try:
        args = CringeConfig(**{k: v for k, v in train.items() if k not in lora_keys})
    except (TypeError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"train: {str(err).strip().splitlines()[0]}") from None
    return args, lora


# state.json's layout and what its hash covers; 2: only what changes results (IterateConfig.result_dict/resolved)
STATE_VERSION = 2
_NONE = object()


def compared_train(train: dict, loss: str) -> dict:
    """The train section as a resume compares it: a loss setting given at the loss's default (or as null) is the same
    run as one left unset. Only the keys a user set are stored (state.json records the section as given), so a run of
    an earlier version, which wrote no defaults, compares equal."""
    spec = LOSSES.get(loss)
    if spec is None:
        return dict(train)
    defaults = dataclasses.asdict(spec.settings_type())
    return {k: v for k, v in train.items() if not (k in defaults and (v is None or v == defaults[k]))}


# ----- configuration ---------------------------------------------------------------------------------------

SECTIONS = ("reward", "eval_reward", "sampling", "train", "vllm", "accelerate")

ITERATE_HELP = """sections (YAML mappings; dotted flags reach their keys, e.g. --train.learning_rate 1e-5):
  reward, eval_reward   a reward source: {type: callable, function: "module:fn", kwargs: {...}}
                        | {type: model, path: DIR, input: auto|conversation|completion|prompt+completion, ...}
                        | {type: judge, base_url: URL, model: NAME, api_key_env: VAR}
  sampling              n, max_new_tokens, temperature, top_p, top_k, seed, batch_size
  train                 any `cringe train` training flag (CringeConfig: learning_rate, num_train_epochs,
                        per_device_train_batch_size, beta, alpha, margin, ...) and LoRA (use_peft, lora_r, ...)
  vllm                  vLLM engine options: tensor_parallel_size, gpu_memory_utilization, dtype,
                        max_model_len, enforce_eager, ... (passed to vllm.LLM as given)
  accelerate            each round's training under `accelerate launch` (cringe.loop.executor): config_file,
                        num_processes, any other launch flag (main_process_port, ...), and sample: true to
                        sample data-parallel over the same processes (transformers sampler)

Rerun the same command to resume an interrupted run."""


def section_parser(name: str):
    if name == "train":
        return make_parser((CringeConfig, LoraArguments), prog="train")
    if name == "sampling":
        return make_parser(SamplingConfig, prog="sampling")
    return None  # reward sources: free-form, checked by cringe.rewards.load_reward_source


def section_parsers() -> dict:
    """section name -> its parser (None: a free-form section, checked where it is used)."""
    return {name: section_parser(name) for name in SECTIONS}


def iterate_parser():
    return make_parser(
        flat_dataclass(IterateConfig, set(SECTIONS)),
        prog="cringe iterate",
        description="Iterative preference training: sample -> score -> pair -> train -> evaluate, "
        "round after round (resumable).",
        epilog=ITERATE_HELP,
    )


def parse_iterate_args(argv: list[str]) -> IterateConfig:
    """An IterateConfig from `--config FILE` plus flags; every key typed and checked before any work."""

    (flags,), sections = parse_with_sections(iterate_parser(), argv, 1, section_parsers())
    return IterateConfig(**dataclasses.asdict(flags), **sections)


def load_config(path: str | None, overrides: list[str]) -> IterateConfig:
    """YAML file plus `--key value` overrides (dotted keys reach sections: `--train.learning_rate 1e-5`)."""
    return parse_iterate_args((["--config", str(path)] if path else []) + list(overrides))
