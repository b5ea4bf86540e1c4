"""The iterative loop (Iterative Pairwise Cringe, Iterative binary Cringe, Iterative DPO): docs/design.md.

Round k, starting from policy M_{k-1} (M_0 = the initial model):
    samples.jsonl   N completions per prompt sampled from M_{k-1}
    scores.jsonl    one reward per sample
    pairs.jsonl     best-vs-worst pairs (or threshold-labelled rows for binary Cringe), with pairing.json
    model/          M_k, trained from M_{k-1} on this round's data (optionally with earlier rounds')
    eval.json       M_k against M_0 on held-out prompts
Run directory: round-1/, round-2/, ..., state.json (the config and its hash), baseline.json (M_0's evaluation).

Every file is written to a temporary name and renamed, so a file that exists is complete. Resuming (running
`cringe iterate` again on the same directory) skips every finished step and continues at the first one
missing; sampling continues from its last finished shard and training from its last checkpoint. Sampling is
seeded per batch from the prompt index, so a resumed run samples what the uninterrupted run would have.
Resuming with a config that changes results is refused, naming the keys that differ; `rounds` may grow.
A second process on the same directory, SIGTERM/SIGINT, damaged files, a full disk, a judge server that dies
and a nan loss each stop the run with one line and resume cleanly (docs/design.md, "Files and resume").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .errors import UserError
from .files import read_json, read_jsonl, write_json, write_jsonl
from .integrity import finished, last_complete_checkpoint
from .models import cpu_prefers_bf16, default_dtype
from .registry import LOSSES, loss_spec
from .rewards import check_reward_spec
from .rundir import RunDir
from .stages import launch_command, run_stage_process

logger = logging.getLogger(__name__)



def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}




@functools.lru_cache(maxsize=None)
def _backend_in(python: str) -> str:
    """What `backend: auto` resolves to under another interpreter (the sampling stage's). Cached: the probe starts
    a Python that imports torch, and the loop asks before every sampling stage."""
    import subprocess

    probe = "from cringe.generation import resolve_backend; print(resolve_backend('auto'))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"sampling_python: {python} cannot import cringe ({out.stderr.strip().splitlines()[-1:]}); "
                        "install the project there too (`make vllm` does)")
    return out.stdout.strip()


@dataclass
class IterateConfig:
    """One iterative run. Every field is a YAML key and a flag of `cringe iterate`; `reward`, `eval_reward`,
    `sampling` and `train` are sections (`--train.learning_rate 1e-5`)."""

    model: str = field(metadata=_help("the initial policy M_0: hub id, local folder or packaged spec"))
    prompts: str = field(metadata=_help("training prompts (any accepted data format; the prompt column is used)"))
    output_dir: str = field(metadata=_help("the run directory; rerun the same command to resume"))
    reward: dict = field(default=None, metadata=_help("reward source: {type: callable|model|judge, ...}"))
    rounds: int = field(default=3, metadata=_help("rounds of sample -> score -> pair -> train"))
    loss: str = field(default="pairwise_cringe", metadata=_help(
        "training loss; each round trains on what it needs (cringe.registry): best-vs-worst pairs, threshold-labelled "
        "samples (binary_cringe), or each prompt's best sample (sft: rejection-sampling fine-tuning)",
        choices=tuple(LOSSES)))
    sampling: dict = field(default_factory=dict, metadata=_help("cringe.generation.SamplingConfig fields"))
    min_gap: float = field(default=0.0, metadata=_help("drop prompts whose best-worst reward gap is below this"))
    binary_threshold: float | None = field(
        default=None, metadata=_help("binary_cringe: good when score >= threshold (default: above the round's mean)"))
    drop_truncated: bool = field(default=False, metadata=_help("never train on completions cut at max_new_tokens"))
    mix_previous: bool = field(default=False, metadata=_help("train round k on the rows of rounds 1..k"))
    dpo_reference: str = field(default="previous", metadata=_help("DPO family reference: the round's start or M_0",
                                                                   choices=("previous", "initial")))
    train: dict = field(default_factory=dict, metadata=_help("CringeConfig fields, plus LoRA: use_peft, lora_r, ..."))
    eval_prompts: str | None = field(default=None, metadata=_help("held-out prompts; none: no evaluation"))
    eval_reward: dict | None = field(default=None, metadata=_help("reward source for evaluation (default: reward)"))
    eval_samples: int = field(default=1, metadata=_help("samples per held-out prompt"))
    eval_every: int = field(default=1, metadata=_help("evaluate every k-th round (and always the last)"))
    max_prompts: int | None = None
    first_round_from: str | None = field(default=None, metadata=_help(
        "a folder with samples.jsonl and scores.jsonl of M_0 on these prompts (as `cringe sample` / `cringe score` "
        "write them): round 1 trains on their rows instead of sampling and scoring again"))
    baseline_from: str | None = field(default=None, metadata=_help(
        "another run directory with M_0's held-out samples and scores on the same eval_prompts: compare against "
        "them instead of sampling M_0 again"))
    # Fresh prompts each round: round k samples prompts [(k-1)*m, k*m) of the list (wrapping around), so R rounds
    # of m prompts label as many samples as one round over R*m prompts. None: every round uses every prompt.
    round_prompts: int | None = field(default=None, metadata=_help("prompts per round, fresh each round"))
    max_eval_prompts: int | None = None
    max_prompt_length: int = 512
    skip_invalid_prompts: bool = field(default=False, metadata=_help(
        "skip (and count) prompts longer than max_prompt_length or otherwise invalid, instead of stopping: for "
        "large public prompt sets such as UltraFeedback's"))
    device: str = field(default="auto", metadata=_help("where models run: auto = cuda when available, else cpu"))
    dtype: str | None = field(default=None, metadata=_help(
        "weights for training and evaluation (default: bfloat16 on a GPU, float32 on a CPU)",
        choices=("float32", "bfloat16", "float16", "auto")))
    sampling_dtype: str | None = field(default=None, metadata=_help(
        "weights for sampling (default: dtype; on a CPU without a dtype given, bfloat16 where the CPU computes it "
        "natively (AMX, AVX512-BF16), float32 elsewhere: bench/cpu_dtype.py)"))
    backend: str = field(default="auto", metadata=_help("sampler: auto = vLLM when installed with a GPU",
                                                         choices=("auto", "transformers", "vllm")))
    vllm: dict = field(default_factory=dict, metadata=_help(
        "vLLM engine options: tensor_parallel_size, gpu_memory_utilization, dtype, max_model_len, enforce_eager, ..."))
    sampling_python: str | None = field(default=None, metadata=_help(
        "the Python that runs each sampling stage (`cringe sample`), e.g. .venv-vllm/bin/python from `make vllm`: "
        "vLLM pins its own transformers, so it lives in an environment of its own; training stays in this one"))
    stage_processes: bool | None = field(default=None, metadata=_help(
        "run sampling and scoring as `cringe sample` / `cringe score` subprocesses, so their GPU memory is "
        "free before training (default: on with a GPU or vLLM, off on a CPU; always on with vLLM)"))
    accelerate: dict = field(default_factory=dict, metadata=_help(
        "train each round under `accelerate launch`: {config_file: FILE, num_processes: N, sample: false, ...}"))
    report_to: list[str] = field(default_factory=list, metadata=_help(
        "trackers for per-round evaluation and training curves: tensorboard, wandb (logs in <output_dir>/logs)"))
    run_name: str | None = field(default=None, metadata=_help("the tracker's run name (default: output_dir's name)"))
    seed: int = 0
    trust_remote_code: bool = field(default=False, metadata=_help("run model code from the hub (off by default)"))

    def __post_init__(self):
        if self.reward is None:
            raise UserError("reward is required: a section {type: callable|model|judge, ...}")
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
        from .generation import SamplingConfig

        try:
            SamplingConfig(**self.sampling)  # validates the keys and values now, not rounds later
        except TypeError as err:
            raise UserError(f"sampling: {err}") from None
        owned = sorted({"loss", "output_dir", "report_to"} & set(self.train))
        if owned:
            raise UserError(f"train: {owned} are set by the loop (use the top-level keys loss / output_dir / "
                            "report_to)")
        from .tracking import check_trackers

        check_trackers(self.report_to)
        config_file = self.accelerate.get("config_file")
        if config_file and not Path(config_file).is_file():
            raise UserError(f"accelerate.config_file: {config_file}: no such file")
        self.training_arguments(Path(self.output_dir) / "round-1")  # every train.* key and value checked now
        if self.sampling_python is not None:
            python = shutil.which(self.sampling_python)
            if python is None:
                raise UserError(f"sampling_python: {self.sampling_python} is not an executable Python "
                                "(`make vllm` builds .venv-vllm/bin/python)")
            self.sampling_python = str(Path(python).absolute())
        if self.vllm and self.resolved_backend() != "vllm":
            raise UserError(f"vllm engine options {sorted(self.vllm)} given, but the sampler is "
                            f"{self.resolved_backend()} (backend: {self.backend})")

    def prompt_errors(self) -> str:
        return "skip" if self.skip_invalid_prompts else "error"

    def resolved_backend(self) -> str:
        from .generation import resolve_backend

        if self.sampling_python is not None and self.backend == "auto":
            return _backend_in(self.sampling_python)  # 'auto' means what is installed there, not here
        return resolve_backend(self.backend)

    def resolved_sampling_dtype(self) -> str | None:
        if self.sampling_dtype or self.dtype or self.resolved_device() != "cpu":
            return self.sampling_dtype or self.dtype
        return "bfloat16" if cpu_prefers_bf16() else "float32"

    def resolved_device(self) -> str:
        from .models import resolve_device

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
        train = {"save_strategy": "epoch", "seed": self.seed + seed_offset, **self.train, "report_to": "none",
                 "output_dir": str(round_dir / rundir.CHECKPOINTS), "loss": self.loss}
        if self.resolved_device() == "cpu":
            train.setdefault("use_cpu", True)  # the Trainer would otherwise take a GPU the user kept out
            if not {"bf16", "fp16"} & set(train):
                # bf16 autocast over fp32 weights where the CPU has native bf16 (about 2x faster steps there);
                # emulated elsewhere, and slower than fp32 (cringe.models.cpu_prefers_bf16).
                train["bf16"] = cpu_prefers_bf16()
        return train

    def training_arguments(self, round_dir: Path, seed_offset: int = 0):
        """(CringeConfig, LoraArguments) for a round: the train section over the loop's defaults."""
        from .trainer import CringeConfig, LoraArguments

        lora_keys = {f.name for f in dataclasses.fields(LoraArguments)}
        train = self.training_settings(round_dir, seed_offset)
        lora = LoraArguments(**{k: v for k, v in train.items() if k in lora_keys})
        try:
            args = CringeConfig(**{k: v for k, v in train.items() if k not in lora_keys})
        except (TypeError, ValueError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"train: {str(err).strip().splitlines()[0]}") from None
        return args, lora

    # Keys that do not change what a round computes: changing them on resume is allowed. (`device`, `backend` and
    # the number of training processes do change results, through what they resolve to: see `resolved`.)
    # first_round_from / baseline_from say where files come from while they are missing; once copied, the files
    # are the record (and are checked like any other).
    OPERATIONAL_KEYS = ("rounds", "output_dir", "device", "vllm", "sampling_python", "stage_processes",
                        "report_to", "run_name", "accelerate", "first_round_from", "baseline_from")
    # How a round's samples become training rows: checked round by round against what each round's pairs were
    # made with (pairing.json), so a round whose pairing kept nothing can be paired again with other settings.
    PAIRING_KEYS = ("min_gap", "binary_threshold", "drop_truncated")

    def resolved(self) -> dict:
        """What the machine-dependent defaults resolve to here: each changes results when it changes."""
        device = self.resolved_device()
        train = self.training_settings(Path(self.output_dir) / "round-1")
        return {"dtype": default_dtype(self.dtype, device),
                "sampling_dtype": default_dtype(self.resolved_sampling_dtype(), device),
                "train_precision": "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "fp32",
                "backend": self.resolved_backend(), "training_processes": self.training_processes()}

    def training_processes(self) -> int:
        """Processes each round trains on (the effective batch is per-device batch x this x accumulation)."""
        if not self.accelerate:
            return 1
        processes = self.accelerate.get("num_processes")
        config_file = self.accelerate.get("config_file")
        if processes is None and config_file:
            processes = (read_yaml_file(config_file) or {}).get("num_processes")
        return int(processes or 1)

    def result_dict(self) -> dict:
        """The fields that decide what every round computes, less those at their defaults: a field added in a
        later version (its default keeping the old behaviour) leaves old runs' comparison unchanged."""
        defaults = IterateConfig.field_defaults()
        skipped = set(self.OPERATIONAL_KEYS) | set(self.PAIRING_KEYS)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skipped and v != defaults.get(k, _NONE)}

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
        saved_config = {k: v for k, v in saved["config"].items()
                        if k not in self.OPERATIONAL_KEYS and k not in self.PAIRING_KEYS}
        old = {k: v for k, v in saved_config.items() if v != defaults.get(k, _NONE)}
        new = self.result_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k, defaults.get(k)) != new.get(k, defaults.get(k)))
        resolved, was = self.resolved(), saved.get("resolved") or {}
        diff += sorted(f"{k} (resolved here: {resolved[k]}, was {was[k]})" for k in was
                       if k in resolved and was[k] != resolved[k])
        return diff


# state.json's layout and what its hash covers; 2: only what changes results (IterateConfig.result_dict/resolved)
STATE_VERSION = 2
_NONE = object()


def read_yaml_file(path: str):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def publish_model(trainer, round_dir: Path, *, base_model: str | None = None, data: str | None = None) -> Path:
    """Save the trained model (LoRA merged) with its log as round_dir/model, renamed into place once complete,
    and drop the round's checkpoints."""
    from .files import DiskFullError, is_disk_full
    from .models import save_for_inference

    tmp = round_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_for_inference(trainer, str(tmp), base_model=base_model, data=data)
        write_json(tmp / "train_log.json", trainer.state.log_history)
    except Exception as err:
        # A half-saved folder only takes space; the checkpoints stay, so a rerun saves again without training.
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise DiskFullError(round_dir / rundir.MODEL) from err
        raise
    return install_model(tmp, round_dir)


def install_model(saved: Path, round_dir: Path) -> Path:
    """A complete saved model folder becomes round_dir/model (one rename), and the round's checkpoints go."""
    os.replace(saved, round_dir / rundir.MODEL)
    shutil.rmtree(round_dir / rundir.CHECKPOINTS, ignore_errors=True)
    return round_dir / rundir.MODEL


class IterativeRun:
    """One run directory of `cringe iterate`. `run()` is the algorithm; the methods below it are its steps, and
    `session()`, `sample`, `score`, `baseline`, `evaluate` and `record` are what other drivers (the demo, RLOO)
    use to run steps of their own in the same directory."""

    def __init__(self, config: IterateConfig, on_step=None):
        self.config = config
        self.on_step = on_step  # called as on_step(round, step_name, seconds) after each finished step
        self.run_dir = RunDir(config.output_dir)
        self.dir = self.run_dir.path
        self.trackers = None  # cringe.tracking.Trackers while a session runs with report_to
        self._tokenizer = None
        self._prompts: dict[bool, list] = {}
        self._rewards: dict[bool, object] = {}

    # ----- the algorithm ----------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every round; returns the evaluations. Each step is skipped when its output is complete,
        so a rerun continues at the first missing one."""
        with self.session():
            for k in range(1, self.config.rounds + 1):
                self.step(k, rundir.SAMPLES, lambda: self.sample_round(k))   # N completions per prompt from M_{k-1}
                self.step(k, rundir.SCORES, lambda: self.score_round(k))     # one reward per completion
                self.step(k, rundir.PAIRS, lambda: self.pair_round(k))       # best vs worst (or good/bad) rows
                self.step(k, rundir.MODEL, lambda: self.train_round(k))      # M_k, trained from M_{k-1}
                if self.evaluates(k):
                    self.step(k, rundir.EVAL, lambda: self.evaluate(k))      # M_k against M_0, held out
                self.log_round(k)
            self.run_dir.update_state(finished_rounds=self.config.rounds)
        return [e for k in range(1, self.config.rounds + 1) if (e := self.run_dir.evaluation(k)) is not None]

    def sample_round(self, k: int) -> None:
        first = self.config.first_round_from
        if k == 1 and first:  # round 1 labels samples of M_0 that were drawn (and scored) elsewhere
            return self._adopt(Path(first) / rundir.SAMPLES, self.run_dir.file(1, rundir.SAMPLES))
        self.sample(k - 1, self.round_prompt_list(k), self.run_dir.file(k, rundir.SAMPLES))

    def score_round(self, k: int) -> None:
        first = self.config.first_round_from
        if k == 1 and first:
            return self._adopt(Path(first) / rundir.SCORES, self.run_dir.file(1, rundir.SCORES))
        samples = self.run_dir.samples(self.run_dir.file(k, rundir.SAMPLES))
        self.score(self.prompts(), samples, self.run_dir.file(k, rundir.SCORES))

    def pair_round(self, k: int) -> None:
        round_dir = self.run_dir.round(k)
        self.pair(self.run_dir.samples(round_dir / rundir.SAMPLES), self.run_dir.scores(round_dir / rundir.SCORES),
                  round_dir)

    def train_round(self, k: int) -> None:
        self.train(k, read_jsonl(self.run_dir.file(k, rundir.PAIRS)), self.run_dir.round(k))

    def evaluates(self, k: int) -> bool:
        c = self.config
        return bool(c.eval_prompts) and (k % c.eval_every == 0 or k == c.rounds)

    # ----- running steps ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """What every driver of a run directory holds while it works there: one process per directory
        (cringe.runlock), SIGTERM/SIGINT stopping at once with complete files only (cringe.interrupt), a full disk
        named, the directory's config checked against this one, and the trackers open."""
        from .files import disk_full_reported
        from .interrupt import signals_interrupt
        from .runlock import RunLock

        with signals_interrupt(), RunLock(self.dir), disk_full_reported(self.dir):
            self.check_state()
            if self.config.report_to:
                from .tracking import Trackers

                self.trackers = Trackers(self.config.report_to, self.run_dir.logs,
                                         self.config.run_name or self.dir.name, dataclasses.asdict(self.config))
            try:
                yield self
            finally:
                if self.trackers is not None:
                    self.trackers.close()
                    self.trackers = None

    def step(self, k: int, name: str, work) -> bool:
        """Run `work` unless round k's output `name` is complete; record it. Returns whether it ran."""
        from .models import free_memory

        self.run_dir.round(k).mkdir(parents=True, exist_ok=True)
        if finished(self.run_dir.file(k, name)):  # a model folder is checked whole before it is trusted
            if not self.run_dir.is_recorded(k, name):  # finished, then the process ended before the record
                self.run_dir.record_step(k, name, None)
            return False
        t0 = time.time()
        work()
        self.record(k, name, time.time() - t0)
        free_memory()  # what the step loaded (a trainer, a model) is garbage now; the next step needs room
        return True

    def record(self, k: int, name: str, seconds: float) -> None:
        """A step of round k is done: in state.json, in the log, and told to `on_step`."""
        self.run_dir.record_step(k, name, seconds)
        logger.info("round %d: %s done in %.1fs", k, name, seconds)
        if self.on_step is not None:
            self.on_step(k, name, seconds)

    def log_round(self, k: int) -> None:
        if self.trackers is None:
            return
        from .tracking import round_metrics

        pairing_path = self.run_dir.file(k, rundir.PAIRING)
        pairing = read_json(pairing_path) if pairing_path.exists() else None
        self.trackers.log(round_metrics(self.run_dir.evaluation(k), pairing, self.run_dir.train_log(k)), step=k)

    def check_state(self) -> dict:
        """Create state.json, or check that the run directory's rounds were computed as this config would compute
        them (refusing a resume that would change results, naming the keys), and record this config's hash."""
        c = self.config
        if not self.run_dir.state_path.exists():
            return self.run_dir.create({"version": STATE_VERSION, "config": dataclasses.asdict(c),
                                        "resolved": c.resolved(), "hash": c.result_hash(),
                                        "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        saved = self.run_dir.state()  # checked: a hand-edited state.json is named, not a KeyError
        diff = c.differences(saved)
        if diff:
            raise UserError(f"{self.dir} holds a run with a different configuration (keys that differ: {diff}); "
                            "use another output_dir, or restore those values to resume")
        self.check_pairing()
        if saved.get("version") != STATE_VERSION:  # a run of an earlier version: recorded as this one from now on
            self.run_dir.update_state(version=STATE_VERSION, resolved=c.resolved(), hash=c.result_hash())
        return self.run_dir.state()

    def check_pairing(self) -> None:
        """Every round already paired was paired with this config's pairing settings (min_gap, ...)."""
        c = self.config
        now = c.pairing_settings()
        legacy = {k: self.run_dir.state()["config"].get(k, now[k]) for k in c.PAIRING_KEYS}
        for k in range(1, c.rounds + 1):
            if not self.run_dir.file(k, rundir.PAIRS).exists():
                continue
            used = {**legacy, **read_json(self.run_dir.file(k, rundir.PAIRING)).get("settings", {})}
            diff = sorted(key for key in now if used.get(key) != now[key])
            if diff:
                raise UserError(f"round {k}'s training rows were paired with " + ", ".join(
                    f"{key}={used.get(key)!r}" for key in diff) + "; this config says " + ", ".join(
                    f"{key}={now[key]!r}" for key in diff) + ": restore those values to resume (pairing settings "
                    "may change only for rounds not yet paired)")

    def _adopt(self, source: Path, target: Path) -> None:
        """Round 1's rows of a samples or scores file drawn from M_0 elsewhere: the rows of this round's prompts."""
        if not source.exists():
            raise UserError(f"first_round_from: {source}: no such file")
        ids = {p.prompt_id for p in self.round_prompt_list(1)}
        rows = [r for r in read_jsonl(source) if r["prompt_id"] in ids]
        if {r["prompt_id"] for r in rows} != ids:
            raise UserError(f"first_round_from: {source} lacks prompts {sorted(ids - {r['prompt_id'] for r in rows})[:5]}"
                            " of round 1 (prompt ids are positions in this run's prompts file)")
        write_jsonl(target, rows)

    # ----- shared pieces, built once ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model, self.config.trust_remote_code)
        return self._tokenizer

    def reward(self, evaluation: bool = False):
        """The reward source (evaluation: eval_reward when given), loaded once and kept while it may stay."""
        from .rewards import load_reward_source

        evaluation = evaluation and self.config.eval_reward is not None
        if evaluation not in self._rewards:
            spec = self.config.eval_reward if evaluation else self.config.reward
            self._rewards[evaluation] = load_reward_source(spec, device=self.config.device)
        return self._rewards[evaluation]

    def release_rewards(self) -> None:
        """On a GPU a reward model must not sit beside the policy while it trains; on a CPU, keeping it saves
        reloading it every round."""
        if self.config.resolved_device() != "cpu":
            self._rewards.clear()

    def prompts(self, evaluation: bool = False):
        """The training (or held-out) prompts, read, validated and tokenised once per run."""
        from .data import load_prompts

        if evaluation not in self._prompts:
            c = self.config
            source = c.eval_prompts if evaluation else c.prompts
            limit = c.max_eval_prompts if evaluation else c.max_prompts
            self._prompts[evaluation] = load_prompts(source, self.tokenizer, max_prompt_length=c.max_prompt_length,
                                                     limit=limit, on_invalid=c.prompt_errors())
        return self._prompts[evaluation]

    def round_prompt_list(self, k: int):
        """The prompts round k samples: all of them, or round k's slice of `round_prompts` (prompt ids stay the
        positions in the full list)."""
        from .stages import select_prompts

        m = self.config.round_prompts
        return select_prompts(self.prompts(), ((k - 1) * (m or 0)), m)

    def model_path(self, k: int) -> str:
        """Where M_k lives: the initial spec for k = 0."""
        return self.config.model if k == 0 else str(self.run_dir.model(k))

    def load_model(self, k: int, dtype: str | None = None, device: str | None = None):
        """M_k in `dtype` (default: the run's dtype) on `device` (None: the CPU, where the Trainer takes it from)."""
        from .models import load_model

        dtype = default_dtype(dtype or self.config.dtype, self.config.resolved_device())
        return load_model(self.model_path(k), self.tokenizer, dtype, self.config.trust_remote_code, device=device)

    # ----- the steps --------------------------------------------------------------------------------------------
    def sample(self, model_index: int, prompts, out_path: Path, n: int | None = None, stream: str = "train",
               evaluation: bool = False):
        """Sample from M_{model_index} into out_path, shard by shard (resumable), in this process or in a
        `cringe sample` subprocess. `stream` and model_index pick the seed, so no two stages share one."""
        from .generation import SamplingConfig, derive_seed
        from .models import free_memory
        from .stages import open_sampler, sample_to_file

        c = self.config
        settings = {**c.sampling, **({"n": n} if n is not None else {})}
        settings["seed"] = derive_seed(settings.get("seed", c.seed), stream, model_index)
        if c.use_stage_processes():
            self._sample_in_subprocess(model_index, prompts, out_path, settings, evaluation)
            return self.run_dir.samples(out_path)
        sampling = SamplingConfig(**settings)
        samples = sample_to_file(prompts, sampling, out_path, lambda: open_sampler(
            c.backend, self.model_path(model_index), self.tokenizer, device=c.device,
            dtype=c.resolved_sampling_dtype(), trust_remote_code=c.trust_remote_code, engine_options=c.vllm,
            new_tokens=len(prompts) * sampling.n * sampling.max_new_tokens))
        free_memory()
        return samples

    def _sample_in_subprocess(self, model_index: int, prompts, out_path: Path, settings: dict,
                              evaluation: bool) -> None:
        from .stages import select_prompts

        c = self.config
        source = c.eval_prompts if evaluation else c.prompts
        limit = c.max_eval_prompts if evaluation else c.max_prompts
        ids = [p.prompt_id for p in prompts]
        start, count = ids[0], len(ids)
        everything = self.prompts(evaluation)
        if [p.prompt_id for p in everything] == ids:
            count = None
        elif [p.prompt_id for p in select_prompts(everything, start, count)] != ids:
            # The stage reads the prompts file itself and can only take a (wrapping) slice of it.
            raise RuntimeError(f"the sampling stage would not pick the prompts {ids[:3]}...: a slice of {count} "
                               f"prompts from {start} is not the round's")
        stage = {"model": self.model_path(model_index), "tokenizer": c.model, "prompts": source,
                 "output": str(out_path), "backend": c.backend, "device": c.device,
                 "dtype": c.resolved_sampling_dtype(), "start": start, "count": count, "max_prompts": limit,
                 "max_prompt_length": c.max_prompt_length, "trust_remote_code": c.trust_remote_code, **settings}
        if c.skip_invalid_prompts:
            stage["on_invalid"] = "skip"  # the stage must read the same prompt list
        if c.vllm:
            stage["vllm"] = c.vllm
        data_parallel = c.accelerate.get("sample") and c.resolved_backend() == "transformers"
        if data_parallel:
            launcher = launch_command(c.accelerate, python=c.sampling_python)
        else:
            launcher = [c.sampling_python, "-m", "cringe"] if c.sampling_python else None
        run_stage_process("sample", stage, out_path, launcher=launcher)

    def score(self, prompts, samples, out_path: Path, evaluation: bool = False) -> list[float]:
        """One reward per sample into out_path, in this process or in a `cringe score` subprocess."""
        from .models import free_memory
        from .stages import score_to_file

        c = self.config
        spec = c.eval_reward if evaluation and c.eval_reward is not None else c.reward
        if c.use_stage_processes() and all(s.prompt is not None for s in samples):
            samples_path = out_path.parent / f".{out_path.stem}-input.jsonl"
            write_jsonl(samples_path, [s.to_dict() for s in samples])
            run_stage_process("score", {"samples": str(samples_path), "output": str(out_path), "device": c.device,
                                        "reward": spec}, out_path)
            samples_path.unlink()
            return self.run_dir.scores(out_path)
        scores = score_to_file(self.reward(evaluation), samples, out_path, prompts)
        self.release_rewards()
        free_memory()
        return scores

    def pair(self, samples, scores, round_dir: Path) -> list[dict]:
        """The round's training rows, of the kind the loss needs (cringe.pairing)."""
        from .pairing import best_only, best_vs_worst, by_threshold

        c = self.config
        kind = loss_spec(c.loss).data_kind
        if kind == "binary":
            threshold = c.binary_threshold
            if threshold is None:
                # Default: good means above this round's mean reward (a median would call every sample good
                # when more than half share the lowest score).
                threshold = math.nextafter(sum(scores) / len(scores), math.inf)
            rows, report = by_threshold(samples, scores, threshold=threshold, drop_truncated=c.drop_truncated)
        elif kind == "sft":
            rows, report = best_only(samples, scores, min_gap=c.min_gap, drop_truncated=c.drop_truncated)
        else:
            rows, report = best_vs_worst(samples, scores, min_gap=c.min_gap, drop_truncated=c.drop_truncated)
        write_json(round_dir / rundir.PAIRING, {**report.as_dict(), "settings": c.pairing_settings()})
        logger.info("round %s pairing: %s", round_dir.name, report.as_dict())
        if not rows:
            # pairs.jsonl is not written: a rerun pairs this round again, with whatever pairing settings it has.
            raise UserError(f"{round_dir.name}: pairing kept no training rows of {report.prompts} prompts (dropped: "
                            f"{report.dropped}); lower min_gap, set drop_truncated false, or sample more per prompt "
                            "(sampling.n, sampling.temperature), then rerun: samples and scores are kept")
        write_jsonl(round_dir / rundir.PAIRS, rows)
        return rows

    def train(self, k: int, rows: list[dict], round_dir: Path) -> None:
        from .pairing import as_training_data
        from .trainer import CringeTrainer
        from .tracking import trainer_callback

        c = self.config
        if c.mix_previous:
            rows = [r for j in range(1, k) for r in read_jsonl(self.run_dir.file(j, rundir.PAIRS))] + rows
        if c.accelerate:
            return self._train_launched(k, rows, round_dir)
        data = as_training_data(rows, loss_spec(c.loss).data_kind)
        args, lora = c.training_arguments(round_dir, seed_offset=k)
        model = self.load_model(k - 1)
        ref_model = self.load_model(0) if self._initial_reference() else None
        callbacks = [trainer_callback(self.trackers, self.steps_before(k))] if self.trackers else []
        trainer = CringeTrainer(model=model, args=args, train_dataset=data, processing_class=self.tokenizer,
                                ref_model=ref_model, peft_config=lora.peft_config(), callbacks=callbacks)
        checkpoint = last_complete_checkpoint(self.run_dir.checkpoints(k))
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        publish_model(trainer, round_dir, base_model=self.model_path(k - 1),
                      data=f"round {k} of `cringe iterate`: {len(rows)} rows from {round_dir / rundir.PAIRS}")

    def _initial_reference(self) -> bool:
        return loss_spec(self.config.loss).needs_reference and self.config.dpo_reference == "initial"

    def _train_launched(self, k: int, rows: list[dict], round_dir: Path) -> None:
        """Round k's training as `accelerate launch [the user's accelerate settings] -m cringe train`: DDP, FSDP or
        ZeRO from the user's accelerate config, multi-node through accelerate's own flags. The same `cringe train`
        as standalone, on the round's token-id rows; its model is published like the in-process one."""
        c = self.config
        rows_path = round_dir / ".train_rows.jsonl"
        write_jsonl(rows_path, rows)
        tmp = round_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint = last_complete_checkpoint(self.run_dir.checkpoints(k))
        settings = {
            "model_name_or_path": self.model_path(k - 1), "dtype": default_dtype(c.dtype, c.resolved_device()),
            "trust_remote_code": c.trust_remote_code, "dataset": str(rows_path), "save_model_to": str(tmp),
            "data_description": f"round {k} of `cringe iterate`: {len(rows)} rows from {round_dir / rundir.PAIRS}",
            **({"ref_model_name_or_path": self.model_path(0)} if self._initial_reference() else {}),
            **c.training_settings(round_dir, seed_offset=k),
            **({"resume_from_checkpoint": str(checkpoint)} if checkpoint else {}),
        }
        run_stage_process("train", settings, tmp, launcher=launch_command(c.accelerate))
        install_model(tmp, round_dir)
        rows_path.unlink()
        if self.trackers is not None:
            offset = self.steps_before(k)
            for line in self.run_dir.train_log(k):
                self.trackers.log_training(line, step=offset + line.get("step", 0))

    def steps_before(self, k: int) -> int:
        """Optimiser steps of rounds 1..k-1: where round k's training curve continues."""
        return sum(max((h.get("step", 0) for h in self.run_dir.train_log(j)), default=0) for j in range(1, k))

    def baseline(self):
        """M_0's held-out samples and scores: computed once (or taken from `baseline_from`), the reference every
        round is compared with."""
        prompts = self.prompts(evaluation=True)
        paths = (self.run_dir.baseline_samples, self.run_dir.baseline_scores)
        if self.config.baseline_from and not all(p.exists() for p in paths):
            source = RunDir(self.config.baseline_from)
            for origin, target in zip((source.baseline_samples, source.baseline_scores), paths):
                if not origin.exists():
                    raise UserError(f"baseline_from: {origin}: no such file (sample that run's baseline first)")
                shutil.copyfile(origin, target)
        samples = self._load_or_sample(0, prompts, paths[0])
        scores = (self.run_dir.scores(paths[1]) if paths[1].exists()
                  else self.score(prompts, samples, paths[1], evaluation=True))
        return prompts, samples, scores

    def _load_or_sample(self, model_index, prompts, path):
        if path.exists():
            return self.run_dir.samples(path)
        return self.sample(model_index, prompts, path, n=self.config.eval_samples, stream="eval", evaluation=True)

    def _logprobs(self, k: int, samples) -> list[float]:
        """log M_k(sample) on the run's device, the model dropped afterwards (the next stage needs the memory)."""
        from .models import free_memory
        from .stages import completion_logprobs

        model = self.load_model(k, device=self.config.device)
        logps = completion_logprobs(model, samples, self.tokenizer.pad_token_id)
        del model
        free_memory()
        return logps

    def evaluate(self, k: int) -> dict:
        """M_k against M_0 on the held-out prompts: cringe.evaluate.compare's schema plus the round."""
        from .evaluate import compare, comparison_table
        from .models import add_evaluation_to_card

        round_dir = self.run_dir.round(k)
        prompts, base_samples, base_scores = self.baseline()
        samples = self._load_or_sample(k, prompts, round_dir / rundir.EVAL_SAMPLES)
        scores_path = round_dir / rundir.EVAL_SCORES
        scores = (self.run_dir.scores(scores_path) if scores_path.exists()
                  else self.score(prompts, samples, scores_path, evaluation=True))
        result = {"round": k, **compare(samples, scores, base_samples, base_scores,
                                        policy_logps=self._logprobs(k, samples),
                                        reference_logps=self._logprobs(0, samples), seed=self.config.seed)}
        # The card first: eval.json is the step's completion marker.
        add_evaluation_to_card(self.run_dir.model(k), comparison_table([result], "round", "round", baseline="M0")
                               + f"\n\nHeld-out prompts: {result['n_prompts']} from `{self.config.eval_prompts}`.")
        write_json(round_dir / rundir.EVAL, result)
        return result


def evaluation_table(evaluations: list[dict]) -> str:
    from .evaluate import comparison_table

    return comparison_table(evaluations, "round", "round", baseline="M0")


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
  accelerate            each round's training as `accelerate launch ... -m cringe train`: config_file,
                        num_processes, any other launch flag (main_process_port, ...), and sample: true to
                        sample data-parallel over the same processes (transformers sampler)

Rerun the same command to resume an interrupted run."""


def _section_parser(name: str):
    from .config import make_parser

    if name == "train":
        from .trainer import CringeConfig, LoraArguments

        return make_parser((CringeConfig, LoraArguments), prog="train")
    if name == "sampling":
        from .generation import SamplingConfig

        return make_parser(SamplingConfig, prog="sampling")
    return None  # reward sources: free-form, checked by cringe.rewards.load_reward_source


def iterate_parser():
    from .config import flat_dataclass, make_parser

    return make_parser(flat_dataclass(IterateConfig, set(SECTIONS)), prog="cringe iterate",
                       description="Iterative preference training: sample -> score -> pair -> train -> evaluate, "
                                   "round after round (resumable).", epilog=ITERATE_HELP)


def parse_iterate_args(argv: list[str]) -> IterateConfig:
    """An IterateConfig from `--config FILE` plus flags; every key typed and checked before any work."""
    from .config import parse_with_sections

    (flags,), sections = parse_with_sections(iterate_parser(), argv, 1,
                                             {name: _section_parser(name) for name in SECTIONS})
    return IterateConfig(**dataclasses.asdict(flags), **sections)


def load_config(path: str | None, overrides: list[str]) -> IterateConfig:
    """YAML file plus `--key value` overrides (dotted keys reach sections: `--train.learning_rate 1e-5`)."""
    return parse_iterate_args((["--config", str(path)] if path else []) + list(overrides))
