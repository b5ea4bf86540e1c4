"""Where each step of the loop runs, decided in one place (`executors`): in this process, in a stage process of its
own (`python -m cringe.loop.child JOB`), or under `accelerate launch` (many processes, one GPU each).

A step's inputs are one typed value (SampleJob, ScoreJob, TrainJob). Every executor ends in the same call,
`job.run(loaded, on_log)`: this process calls it directly; a child process reads the job back from the JSON file
the parent wrote beside the step's output (cringe.loop.child) and calls it there. So a step computes the same
thing wherever it runs, and a run may switch executors between resumes (`accelerate` and `stage_processes` are
operational keys).

On a GPU, sampling and scoring run in stage processes (a child's GPU memory is back when it exits, so training finds
it free) and training stays in this process unless `accelerate` launches it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from transformers import TrainerCallback

from cringe.data import load_prompts
from cringe.durable.files import read_json, read_jsonl, write_json
from cringe.durable.integrity import last_complete_checkpoint
from cringe.errors import UserError
from cringe.generation import SamplingConfig
from cringe.loop import rundir
from cringe.loop.config import training_arguments
from cringe.loop.pairing import as_training_data
from cringe.loop.processes import StageFailed, distributed_state, launch_command
from cringe.loop.stages import open_sampler, sample_to_file, score_to_file, select_prompts
from cringe.models import default_dtype, free_memory, load_model, load_tokenizer, resolve_device, save_for_inference
from cringe.registry import loss_spec
from cringe.rewards import load_reward_source
from cringe.trainer import CringeTrainer

logger = logging.getLogger(__name__)

CHILD = "cringe.loop.child"  # the module a child process runs: `python -m cringe.loop.child JOB.json`


class Loaded:
    """What a process loads once and its steps share: tokenizers, prompt lists, reward sources. The parent keeps
    one for the run; a child process starts with an empty one."""

    def __init__(self, keep_rewards: bool = True):
        self.keep_rewards = keep_rewards  # a CPU keeps reward models between rounds; a GPU needs the memory back
        self._tokenizers: dict = {}
        self._prompts: dict = {}
        self._rewards: dict = {}

    def tokenizer(self, spec: str, trust_remote_code: bool = False):
        if spec not in self._tokenizers:
            self._tokenizers[spec] = load_tokenizer(spec, trust_remote_code)
        return self._tokenizers[spec]

    def prompts(self, path: str, tokenizer_spec: str, *, limit, max_length, on_invalid, trust_remote_code=False):
        """A prompts file, read, validated and tokenised once."""
        key = (path, tokenizer_spec, limit, max_length, on_invalid)
        if key not in self._prompts:
            tokenizer = self.tokenizer(tokenizer_spec, trust_remote_code)
            self._prompts[key] = load_prompts(
                path, tokenizer, max_prompt_length=max_length, limit=limit, on_invalid=on_invalid
            )
        return self._prompts[key]

    def reward(self, spec: dict, device: str):
        key = json.dumps([spec, device], sort_keys=True)
        if key not in self._rewards:
            self._rewards[key] = load_reward_source(spec, device=device)
        return self._rewards[key]

    def release_rewards(self) -> None:
        if not self.keep_rewards:
            self._rewards.clear()


# ----- the jobs -----------------------------------------------------------------------------------------------------
@dataclass
class SampleJob:
    """M_k's completions for a (wrapping) slice of a prompts file, shard by shard into `output` (resumable)."""

    kind: ClassVar[str] = "sample"
    model: str
    tokenizer: str
    prompts: str
    output: str
    sampling: dict  # cringe.generation.SamplingConfig fields, the seed already derived for the stage
    backend: str = "auto"
    device: str = "auto"
    dtype: str | None = None
    start: int = 0
    count: int | None = None  # None: every prompt
    max_prompts: int | None = None
    max_prompt_length: int = 512
    on_invalid: str = "error"
    trust_remote_code: bool = False
    engine_options: dict = field(default_factory=dict)

    @classmethod
    def of_run(cls, config, model: str, output, sampling: dict, evaluation: bool, start=0, count=None) -> SampleJob:
        """Sampling `model` on a slice of an IterateConfig's training (or held-out) prompts."""
        c = config
        return cls(
            model=model,
            tokenizer=c.model,
            prompts=c.eval_prompts if evaluation else c.prompts,
            output=str(output),
            sampling=sampling,
            backend=c.backend,
            device=c.device,
            dtype=c.resolved_sampling_dtype(),
            start=start,
            count=count,
            max_prompts=c.max_eval_prompts if evaluation else c.max_prompts,
            max_prompt_length=c.max_prompt_length,
            on_invalid=c.prompt_errors(),
            trust_remote_code=c.trust_remote_code,
            engine_options=c.vllm,
        )

    def prompt_list(self, loaded: Loaded) -> list:
        everything = loaded.prompts(
            self.prompts,
            self.tokenizer,
            limit=self.max_prompts,
            max_length=self.max_prompt_length,
            on_invalid=self.on_invalid,
            trust_remote_code=self.trust_remote_code,
        )
        return select_prompts(everything, self.start, self.count)

    def run(self, loaded: Loaded, on_log=None) -> list:
        """Under `accelerate launch` each process samples its share of the shards (one GPU each). Returns the
        samples (on process 0; [] on the others)."""
        prompts = self.prompt_list(loaded)
        sampling = SamplingConfig(**self.sampling)
        rank, world, local, barrier = distributed_state(self.device)
        device = f"cuda:{local}" if world > 1 and resolve_device(self.device) == "cuda" else self.device
        return sample_to_file(
            prompts,
            sampling,
            Path(self.output),
            lambda: open_sampler(
                self.backend,
                self.model,
                loaded.tokenizer(self.tokenizer, self.trust_remote_code),
                device=device,
                dtype=self.dtype,
                trust_remote_code=self.trust_remote_code,
                engine_options=self.engine_options,
                new_tokens=len(prompts) * sampling.n * sampling.max_new_tokens,
            ),
            rank=rank,
            world=world,
            barrier=barrier,
        )

    def replay_log(self, on_log) -> None:
        pass


@dataclass
class ScoreJob:
    """One reward per sample of a samples file (each sample carrying its prompt's text) into `output`."""

    kind: ClassVar[str] = "score"
    samples: str
    output: str
    reward: dict
    device: str = "auto"

    def run(self, loaded: Loaded, on_log=None) -> list[float]:
        if not Path(self.samples).exists():
            raise UserError(f"samples {self.samples}: no such file")
        samples = rundir.RunDir.samples(self.samples)
        if not samples:  # before a reward model loads
            raise UserError(f"{self.samples}: no samples")
        reward = loaded.reward(self.reward, self.device)
        scores = score_to_file(reward, samples, Path(self.output))
        loaded.release_rewards()
        return scores

    def replay_log(self, on_log) -> None:
        pass


@dataclass
class TrainJob:
    """M_k trained from M_{k-1} on a round's token-id rows, saved (LoRA merged, with train_log.json) to `output`.
    Checkpoints go to train["output_dir"]; training resumes from `resume_from_checkpoint` when given."""

    kind: ClassVar[str] = "train"
    model: str
    tokenizer: str
    rows: str  # the round's training rows, JSONL (cringe.loop.pairing)
    data_kind: str  # the loss's: pairwise, binary or sft
    train: dict  # flat CringeConfig and LoRA settings (IterateConfig.training_settings)
    output: str
    dtype: str | None = None
    trust_remote_code: bool = False
    reference: str | None = None  # the DPO family's reference model (None: a frozen copy of the start)
    resume_from_checkpoint: str | None = None
    description: str = ""  # what the model card says about the data

    @classmethod
    def of_round(cls, config, k: int, model: str, reference: str | None, rows: Path) -> TrainJob:
        """Round k of an IterateConfig's run: `model` (M_{k-1}) on the rows in `rows`, saved beside them as
        .model.tmp, resumed from the round's last complete checkpoint."""
        c, round_dir = config, rows.parent
        settings = c.training_settings(round_dir, seed_offset=k)
        checkpoint = last_complete_checkpoint(Path(settings["output_dir"]))
        return cls(
            model=model,
            tokenizer=c.model,
            rows=str(rows),
            data_kind=loss_spec(c.loss).data_kind,
            train=settings,
            output=str(round_dir / rundir.MODEL_TMP),
            dtype=default_dtype(c.dtype, c.resolved_device()),
            trust_remote_code=c.trust_remote_code,
            reference=reference,
            resume_from_checkpoint=str(checkpoint) if checkpoint else None,
            description=f"round {k} of `cringe iterate`: {_count_lines(rows)} rows from {round_dir / rundir.PAIRS}",
        )

    def run(self, loaded: Loaded, on_log=None) -> None:
        """`on_log(logs, global_step)` gets each of the Trainer's log lines as they come (process 0)."""
        data = as_training_data(read_jsonl(self.rows), self.data_kind)
        args, lora = training_arguments(self.train)
        tokenizer = loaded.tokenizer(self.tokenizer, self.trust_remote_code)
        model = load_model(self.model, tokenizer, self.dtype, self.trust_remote_code)
        reference = None
        if self.reference is not None:
            reference = load_model(self.reference, tokenizer, self.dtype, self.trust_remote_code)
        trainer = CringeTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            ref_model=reference,
            peft_config=lora.peft_config(),
            callbacks=[_forward_logs(on_log)] if on_log is not None else [],
        )
        trainer.train(resume_from_checkpoint=self.resume_from_checkpoint)
        save_for_inference(trainer, self.output, base_model=self.model, data=self.description)
        if trainer.is_world_process_zero():
            write_json(Path(self.output) / "train_log.json", trainer.state.log_history)

    def replay_log(self, on_log) -> None:
        """What `on_log` would have seen, from the saved log: for a child process, whose Trainer is not here."""
        for line in read_json(Path(self.output) / "train_log.json"):
            on_log(line, line.get("step", 0))


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _forward_logs(on_log):
    class ForwardLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                on_log(logs, state.global_step)

    return ForwardLogs()


JOBS = {job.kind: job for job in (SampleJob, ScoreJob, TrainJob)}
Job = SampleJob | ScoreJob | TrainJob


def job_path(job: Job) -> Path:
    """Where a child process finds its job: beside the step's output."""
    output = Path(job.output)
    return output.parent / f".{job.kind}-job-{output.name.strip('.')}.json"


def write_job(job: Job) -> Path:
    path = job_path(job)
    write_json(path, {"kind": job.kind, **dataclasses.asdict(job)})
    return path


def read_job(path: str | Path) -> Job:
    data = read_json(path)
    kind = data.pop("kind", None)
    if kind not in JOBS:
        raise UserError(f"{path}: not a job file (kind {kind!r}, not one of {', '.join(JOBS)})")
    try:
        return JOBS[kind](**data)
    except TypeError as err:
        raise UserError(f"{path}: {err}") from None


# ----- the executors ------------------------------------------------------------------------------------------------
class Executor(Protocol):
    def run(self, job: Job, on_log=None) -> None:
        """Run `job` to completion (its output exists afterwards); `on_log` as for TrainJob.run."""


class InProcess:
    """In this process, sharing what it has loaded; what the step loaded is freed afterwards."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded

    def run(self, job: Job, on_log=None) -> None:
        job.run(self.loaded, on_log)
        free_memory()


class StageProcess:
    """In a process of its own: `python -m cringe.loop.child JOB.json` (under `python`, e.g. vLLM's environment).
    The child owns the GPU memory it uses, and it is back when the child exits."""

    def __init__(self, python: str | None = None):
        self.python = python

    def command(self, job: Job) -> list[str]:
        return [self.python or sys.executable, "-m", CHILD]

    def run(self, job: Job, on_log=None) -> None:
        path = write_job(job)
        command = self.command(job) + [str(path)]
        logger.info("%s step in a process of its own: %s", job.kind, " ".join(command))
        code = subprocess.run(command, env=dict(os.environ)).returncode
        if code != 0:
            raise StageFailed(
                f"the {job.kind} step's process failed (exit status {code}; its message is above); "
                f"its job is {path}; rerun to resume"
            )
        if not Path(job.output).exists():
            raise StageFailed(f"the {job.kind} step's process exited without writing {job.output}")
        path.unlink()
        if on_log is not None:
            job.replay_log(on_log)


class AccelerateLaunch(StageProcess):
    """Under `accelerate launch` with the user's settings (config_file, num_processes, any launch flag): DDP, FSDP
    or ZeRO from the user's accelerate config, multi-node through accelerate's own flags."""

    def __init__(self, settings: dict, python: str | None = None):
        super().__init__(python)
        self.settings = settings

    def command(self, job: Job) -> list[str]:
        return launch_command(self.settings, python=self.python, module=CHILD)


@dataclass
class Executors:
    """Where each kind of step runs."""

    sample: Executor
    score: Executor
    train: Executor


def executors(config, loaded: Loaded, stage_process=StageProcess) -> Executors:
    """From an IterateConfig: sampling and scoring in stage processes when config.use_stage_processes() (a GPU,
    vLLM, another Python for sampling), sampling data-parallel under `accelerate launch` with accelerate.sample
    (transformers sampler), training under `accelerate launch` when `accelerate` is set. `stage_process(python)`
    makes the stage processes' executor (a benchmark passes a StageProcess subclass that measures)."""
    here = InProcess(loaded)
    sample, score, train = here, here, here
    if config.use_stage_processes():
        sample, score = stage_process(config.sampling_python), stage_process(None)
        if config.accelerate.get("sample") and config.resolved_backend() == "transformers":
            sample = AccelerateLaunch(config.accelerate, config.sampling_python)
    if config.accelerate:
        train = AccelerateLaunch(config.accelerate)
    return Executors(sample=sample, score=score, train=train)
