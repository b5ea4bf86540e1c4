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
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from cringe.durable.files import (
    DiskFullError,
    disk_full_reported,
    is_disk_full,
    read_jsonl,
    write_json,
    write_jsonl,
)
from cringe.durable.integrity import finished
from cringe.durable.interrupt import signals_interrupt
from cringe.durable.runlock import RunLock
from cringe.errors import UserError
from cringe.generation import derive_seed
from cringe.loop import rundir
from cringe.loop.config import IterateConfig, load_config, parse_iterate_args
from cringe.loop.evaluation import HeldOutEvaluation, evaluation_table
from cringe.loop.executor import Loaded, SampleJob, ScoreJob, StageProcess, TrainJob, executors
from cringe.loop.pairing import training_rows
from cringe.loop.resume import check_state
from cringe.loop.rundir import RunDir
from cringe.loop.stages import prompt_slice, select_prompts, with_prompt_text
from cringe.loop.tracking import Trackers, round_metrics
from cringe.models import default_dtype, free_memory, load_model, save_for_inference
from cringe.registry import loss_spec

logger = logging.getLogger(__name__)

__all__ = [
    "IterateConfig",
    "IterativeRun",
    "load_config",
    "parse_iterate_args",
    "publish_model",
    "publishing",
    "evaluation_table",
]


def publish_model(trainer, round_dir: Path, *, base_model: str | None = None, data: str | None = None) -> Path:
    """Save the trained model (LoRA merged) with its log as round_dir/model, renamed into place once complete,
    and drop the round's checkpoints."""
    with publishing(round_dir) as tmp:
        save_for_inference(trainer, str(tmp), base_model=base_model, data=data)
        write_json(tmp / "train_log.json", trainer.state.log_history)
    return round_dir / rundir.MODEL


@contextlib.contextmanager
def publishing(round_dir: Path):
    """Around what saves M_k into round_dir/.model.tmp (yielded, empty): once it is complete, it becomes
    round_dir/model (one rename) and the round's checkpoints go. A failure removes the half-saved folder, which
    only takes space: the checkpoints stay, so a rerun saves again without training. A full disk is named as
    the model."""
    tmp = round_dir / rundir.MODEL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise DiskFullError(round_dir / rundir.MODEL) from err
        raise
    os.replace(tmp, round_dir / rundir.MODEL)
    shutil.rmtree(round_dir / rundir.CHECKPOINTS, ignore_errors=True)


class IterativeRun(HeldOutEvaluation):
    """One run directory of `cringe iterate`. `run()` is the algorithm; the methods below it are its steps, and
    `session()`, `sample`, `score`, `baseline`, `evaluate` and `record` are what other drivers (the demo, RLOO)
    use to run steps of their own in the same directory. Where each step runs (this process, a stage process,
    `accelerate launch`) is cringe.loop.executor's to decide; `stage_process` makes the stage processes' executor."""

    def __init__(
        self, config: IterateConfig, on_step=None, policies: dict[int, str] | None = None, stage_process=StageProcess
    ):
        self.config = config
        self.on_step = on_step  # called as on_step(round, step_name, seconds) after each finished step
        self.policies = policies or {}  # M_k given from elsewhere (cringe evaluate's policy), not trained here
        self.run_dir = RunDir(config.output_dir)
        self.dir = self.run_dir.path
        self.trackers = None  # cringe.loop.tracking.Trackers while a session runs with report_to
        # On a GPU a reward model must not sit beside the policy while it trains; on a CPU, keeping it saves
        # reloading it every round.
        self.loaded = Loaded(keep_rewards=config.resolved_device() == "cpu")
        self._stage_process = stage_process

    @functools.cached_property
    def executors(self):
        return executors(self.config, self.loaded, self._stage_process)

    # ----- the algorithm ----------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every round; returns the evaluations. Each step is skipped when its output is complete,
        so a rerun continues at the first missing one."""
        with self.session():
            for k in range(1, self.config.rounds + 1):
                self.step(k, rundir.SAMPLES, lambda: self.sample_round(k))  # N completions per prompt from M_{k-1}
                self.step(k, rundir.SCORES, lambda: self.score_round(k))  # one reward per completion
                self.step(k, rundir.PAIRS, lambda: self.pair_round(k))  # best vs worst (or good/bad) rows
                self.step(k, rundir.MODEL, lambda: self.train_round(k))  # M_k, trained from M_{k-1}
                if self.evaluates(k):
                    self.step(k, rundir.EVAL, lambda: self.evaluate(k))  # M_k against M_0, held out
                self.log_round(k)
            self.run_dir.update_state(finished_rounds=self.config.rounds)
        return [e for k in range(1, self.config.rounds + 1) if (e := self.run_dir.evaluation(k)) is not None]

    def sample_round(self, k: int) -> None:
        first = self.config.first_round_from
        if k == 1 and first:  # round 1 labels samples of M_0 that were drawn (and scored) elsewhere
            return adopt(Path(first) / rundir.SAMPLES, self.run_dir.file(1, rundir.SAMPLES), self.round_prompt_list(1))
        self.sample(k - 1, self.round_prompt_list(k), self.run_dir.file(k, rundir.SAMPLES))

    def score_round(self, k: int) -> None:
        first = self.config.first_round_from
        if k == 1 and first:
            return adopt(Path(first) / rundir.SCORES, self.run_dir.file(1, rundir.SCORES), self.round_prompt_list(1))
        samples = self.run_dir.samples(self.run_dir.file(k, rundir.SAMPLES))
        self.score(self.prompts(), samples, self.run_dir.file(k, rundir.SCORES))

    def pair_round(self, k: int) -> None:
        round_dir = self.run_dir.round(k)
        scores = round_dir / rundir.SCORES
        samples = self.run_dir.samples(round_dir / rundir.SAMPLES)
        self.pair(samples, self.run_dir.scores(scores), round_dir, labels=self.run_dir.labels(scores))

    def train_round(self, k: int) -> None:
        self.train(k, read_jsonl(self.run_dir.file(k, rundir.PAIRS)), self.run_dir.round(k))

    def evaluates(self, k: int) -> bool:
        c = self.config
        return bool(c.eval_prompts) and (k % c.eval_every == 0 or k == c.rounds)

    # ----- running steps ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """What every driver of a run directory holds while it works there: one process per directory
        (cringe.durable.runlock), SIGTERM/SIGINT stopping at once with complete files only
        (cringe.durable.interrupt), a full disk named, the directory's config checked against this one, and the
        trackers open."""
        with signals_interrupt(), RunLock(self.dir), disk_full_reported(self.dir):
            self.config.check_backend()  # may start sampling_python: not a config's to do, and the hash needs it
            self.check_state()
            check_reward_prompts(self.config, self.prompts)
            if self.config.report_to:
                self.trackers = Trackers(
                    self.config.report_to,
                    self.run_dir.logs,
                    self.config.run_name or self.dir.name,
                    dataclasses.asdict(self.config),
                )
            try:
                yield self
            finally:
                if self.trackers is not None:
                    self.trackers.close()
                    self.trackers = None

    def step(self, k: int, name: str, work) -> bool:
        """Run `work` unless round k's output `name` is complete; record it. Returns whether it ran."""
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
        metrics = round_metrics(self.run_dir.evaluation(k), self.run_dir.pairing(k), self.run_dir.train_log(k))
        self.trackers.log(metrics, step=k)

    def check_state(self) -> dict:
        """Create state.json, or refuse a resume that would change results (cringe.loop.resume)."""
        return check_state(self.run_dir, self.config)

    # ----- shared pieces, loaded once (cringe.loop.executor.Loaded) -------------------------------------------------
    @property
    def tokenizer(self):
        return self.loaded.tokenizer(self.config.model, self.config.trust_remote_code)

    def prompts(self, evaluation: bool = False):
        """The training (or held-out) prompts, read, validated and tokenised once per run."""
        c = self.config
        return self.loaded.prompts(
            c.eval_prompts if evaluation else c.prompts,
            c.model,
            limit=c.max_eval_prompts if evaluation else c.max_prompts,
            max_length=c.max_prompt_length,
            on_invalid=c.prompt_errors(),
            trust_remote_code=c.trust_remote_code,
        )

    def round_prompt_list(self, k: int):
        """The prompts round k samples: all of them, or round k's slice of `round_prompts` (prompt ids stay the
        positions in the full list)."""
        m = self.config.round_prompts
        return select_prompts(self.prompts(), ((k - 1) * (m or 0)), m)

    def model_path(self, k: int) -> str:
        """Where M_k lives: the initial spec for k = 0."""
        if k in self.policies:
            return self.policies[k]
        return self.config.model if k == 0 else str(self.run_dir.model(k))

    def load_model(self, k: int, dtype: str | None = None, device: str | None = None):
        """M_k in `dtype` (default: the run's dtype) on `device` (None: the CPU, where the Trainer takes it from)."""
        dtype = default_dtype(dtype or self.config.dtype, self.config.resolved_device())
        return load_model(self.model_path(k), self.tokenizer, dtype, self.config.trust_remote_code, device=device)

    # ----- the steps --------------------------------------------------------------------------------------------
    def sample(self, model_index: int, prompts, out_path: Path, n=None, stream="train", evaluation=False):
        """Sample from M_{model_index} into out_path, shard by shard (resumable). `prompts` are the run's prompts
        (training or held-out) or a slice of them; `stream` and model_index pick the seed, so no two stages share
        one."""
        c = self.config
        settings = {**c.sampling, **({"n": n} if n is not None else {})}
        settings["seed"] = derive_seed(settings.get("seed", c.seed), stream, model_index)
        job = SampleJob.of_run(
            c,
            self.model_path(model_index),
            out_path,
            settings,
            evaluation,
            **prompt_slice(prompts, self.prompts(evaluation)),
        )
        self.executors.sample.run(job)
        return self.run_dir.samples(out_path)

    def score(self, prompts, samples, out_path: Path, evaluation: bool = False) -> list[float]:
        """One reward per sample into out_path. Samples written before they carried their prompt's text get it
        from `prompts`."""
        c = self.config
        samples_path = out_path.parent / f".{out_path.stem}-input.jsonl"
        write_jsonl(samples_path, [s.to_dict() for s in with_prompt_text(samples, prompts)])
        spec = c.eval_reward if evaluation and c.eval_reward is not None else c.reward
        try:
            self.executors.score.run(
                ScoreJob(samples=str(samples_path), output=str(out_path), reward=spec, device=c.device)
            )
        finally:
            samples_path.unlink(missing_ok=True)
        return self.run_dir.scores(out_path)

    def pair(self, samples, scores, round_dir: Path, labels=None) -> list[dict]:
        """The round's training rows, of the kind the loss needs (cringe.loop.pairing); `labels`: the binary labels
        the reward source stored beside the scores, if any."""
        c = self.config
        rows, report = training_rows(
            samples,
            scores,
            loss_spec(c.loss).data_kind,
            min_gap=c.min_gap,
            binary_threshold=c.binary_threshold,
            drop_truncated=c.drop_truncated,
            name=round_dir.name,
            labels=labels,
        )
        write_json(round_dir / rundir.PAIRING, {**report.as_dict(), "settings": c.pairing_settings()})
        logger.info("round %s pairing: %s", round_dir.name, report.as_dict())
        if not rows:
            # pairs.jsonl is not written: a rerun pairs this round again, with whatever pairing settings it has.
            raise UserError(
                f"{round_dir.name}: pairing kept no training rows of {report.prompts} prompts (dropped: "
                f"{report.dropped}); lower min_gap, set drop_truncated false, or sample more per prompt "
                "(sampling.n, sampling.temperature), then rerun: samples and scores are kept"
            )
        write_jsonl(round_dir / rundir.PAIRS, rows)
        return rows

    def train(self, k: int, rows: list[dict], round_dir: Path) -> None:
        """M_k from M_{k-1} on the round's rows (and earlier rounds' with mix_previous), saved as .model.tmp and
        renamed to model/; training resumes from the round's last complete checkpoint."""
        c = self.config
        if c.mix_previous:
            rows = [r for j in range(1, k) for r in read_jsonl(self.run_dir.file(j, rundir.PAIRS))] + rows
        rows_path = round_dir / rundir.TRAIN_ROWS
        write_jsonl(rows_path, rows)
        reference = loss_spec(c.loss).needs_reference and c.dpo_reference == "initial"
        job = TrainJob.of_round(c, k, self.model_path(k - 1), self.model_path(0) if reference else None, rows_path)
        try:
            with publishing(round_dir):
                self.executors.train.run(job, on_log=self._training_curve(k))
        finally:
            rows_path.unlink(missing_ok=True)

    def _training_curve(self, k: int):
        """What forwards round k's training log lines to the trackers, at the run's global step (None: none)."""
        if self.trackers is None:
            return None
        offset, trackers = self.steps_before(k), self.trackers
        return lambda logs, step: trackers.log_training(logs, step=offset + step)

    def steps_before(self, k: int) -> int:
        """Optimiser steps of rounds 1..k-1: where round k's training curve continues."""
        return sum(max((h.get("step", 0) for h in self.run_dir.train_log(j)), default=0) for j in range(1, k))


def adopt(source: Path, target: Path, prompts) -> None:
    """first_round_from: the rows of a samples or scores file drawn from M_0 elsewhere that belong to `prompts`
    (round 1's), written to `target`."""
    if not source.exists():
        raise UserError(f"first_round_from: {source}: no such file")
    ids = {p.prompt_id for p in prompts}
    rows = [r for r in read_jsonl(source) if r["prompt_id"] in ids]
    if {r["prompt_id"] for r in rows} != ids:
        missing = sorted(ids - {r["prompt_id"] for r in rows})
        raise UserError(
            f"first_round_from: {source} lacks prompts {missing[:5]} of round 1 (prompt ids are "
            "positions in this run's prompts file)"
        )
    write_jsonl(target, rows)


def evaluate_policy(
    policy: str,
    baseline: str,
    prompts: str,
    reward_spec: dict,
    *,
    work_dir: str | None = None,
    samples: int = 1,
    max_new_tokens: int = 48,
    max_prompts: int | None = None,
    dtype: str | None = None,
    device: str = "auto",
    backend: str = "transformers",
    seed: int = 0,
    trust_remote_code: bool = False,
) -> dict:
    """`cringe evaluate`: a policy (any model spec) against a baseline on held-out prompts, through the loop's own
    evaluation (IterativeRun.compare: the same sampling backends, stage processes, seeds and files). The baseline
    is M_0 and the policy M_1 of a run directory in `work_dir` (default: a temporary one), so a rerun with the same
    work_dir continues where it stopped. The tokenizer is the baseline's; both models must share it."""
    keep = work_dir is not None
    work = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="cringe-evaluate-"))
    config = IterateConfig(
        model=baseline,
        prompts=prompts,
        eval_prompts=prompts,
        output_dir=str(work),
        reward=reward_spec,
        rounds=1,
        eval_samples=samples,
        max_eval_prompts=max_prompts,
        sampling={"max_new_tokens": max_new_tokens},
        dtype=dtype,
        device=device,
        backend=backend,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    run = IterativeRun(config, policies={1: policy})
    try:
        with run.session():
            result = run.compare(1)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result.pop("round")
    return result


def check_reward_prompts(config, prompts_of) -> None:
    """What the reward sources need of the prompts (the instructions reward: IFEval's columns on every row),
    checked before anything is sampled. `prompts_of(evaluation)` gives the training or held-out prompts."""
    from cringe.rewards import check_prompts, checks_prompts  # imported late: the judge pulls in a lot

    uses = [(False, config.reward)] + ([(True, config.eval_reward or config.reward)] if config.eval_prompts else [])
    for evaluation, spec in uses:
        if checks_prompts(spec):
            check_prompts(spec, prompts_of(evaluation))
