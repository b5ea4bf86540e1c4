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
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from cringe.data import load_prompts
from cringe.durable.files import (
    DiskFullError,
    disk_full_reported,
    is_disk_full,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from cringe.durable.integrity import finished, last_complete_checkpoint
from cringe.durable.interrupt import signals_interrupt
from cringe.durable.runlock import RunLock
from cringe.errors import UserError
from cringe.evaluate import compare, comparison_table
from cringe.generation import SamplingConfig, derive_seed
from cringe.loop import rundir
from cringe.loop.config import STATE_VERSION, IterateConfig, load_config, parse_iterate_args
from cringe.loop.pairing import as_training_data, best_only, best_vs_worst, by_threshold
from cringe.loop.processes import launch_command, run_stage_process
from cringe.loop.rundir import RunDir
from cringe.loop.stages import completion_logprobs, open_sampler, sample_to_file, score_to_file, select_prompts
from cringe.loop.tracking import Trackers, round_metrics, trainer_callback
from cringe.models import (
    add_evaluation_to_card,
    default_dtype,
    free_memory,
    load_model,
    load_tokenizer,
    save_for_inference,
)
from cringe.registry import loss_spec
from cringe.rewards import load_reward_source
from cringe.trainer import CringeTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "IterateConfig",
    "IterativeRun",
    "load_config",
    "parse_iterate_args",
    "publish_model",
    "install_model",
    "evaluation_table",
]


def publish_model(trainer, round_dir: Path, *, base_model: str | None = None, data: str | None = None) -> Path:
    """Save the trained model (LoRA merged) with its log as round_dir/model, renamed into place once complete,
    and drop the round's checkpoints."""

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

    def __init__(self, config: IterateConfig, on_step=None, policies: dict[int, str] | None = None):
        self.config = config
        self.on_step = on_step  # called as on_step(round, step_name, seconds) after each finished step
        self.policies = policies or {}  # M_k given from elsewhere (cringe evaluate's policy), not trained here
        self.run_dir = RunDir(config.output_dir)
        self.dir = self.run_dir.path
        self.trackers = None  # cringe.loop.tracking.Trackers while a session runs with report_to
        self._tokenizer = None
        self._prompts: dict[bool, list] = {}
        self._rewards: dict[bool, object] = {}

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
        self.pair(
            self.run_dir.samples(round_dir / rundir.SAMPLES), self.run_dir.scores(round_dir / rundir.SCORES), round_dir
        )

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
            self.check_state()
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
        """Create state.json, or check that the run directory's rounds were computed as this config would compute
        them (refusing a resume that would change results, naming the keys), and record this config's hash."""
        c = self.config
        if not self.run_dir.state_path.exists():
            return self.run_dir.create(
                {
                    "version": STATE_VERSION,
                    "config": dataclasses.asdict(c),
                    "resolved": c.resolved(),
                    "hash": c.result_hash(),
                    "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        saved = self.run_dir.state()  # checked: a hand-edited state.json is named, not a KeyError
        diff = c.differences(saved)
        if diff:
            raise UserError(
                f"{self.dir} holds a run with a different configuration (keys that differ: {diff}); "
                "use another output_dir, or restore those values to resume"
            )
        self.check_pairing()
        if saved.get("version") != STATE_VERSION:  # a run of an earlier version: recorded as this one from now on
            self.run_dir.update_state(version=STATE_VERSION, resolved=c.resolved(), hash=c.result_hash())
        config = dataclasses.asdict(c)
        # rounds a shorter resume leaves on disk stay visible to the run's readers (reports, evaluated_rounds)
        config["rounds"] = max(c.rounds, saved["config"].get("rounds", 0))
        if saved["config"] != config:
            # Only keys a resume may change differ (rounds, output_dir, ...): readers of the run see what it now plans.
            self.run_dir.update_state(config=config)
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
                raise UserError(
                    f"round {k}'s training rows were paired with "
                    + ", ".join(f"{key}={used.get(key)!r}" for key in diff)
                    + "; this config says "
                    + ", ".join(f"{key}={now[key]!r}" for key in diff)
                    + ": restore those values to resume (pairing settings "
                    "may change only for rounds not yet paired)"
                )

    def _adopt(self, source: Path, target: Path) -> None:
        """Round 1's rows of a samples or scores file drawn from M_0 elsewhere: the rows of this round's prompts."""
        if not source.exists():
            raise UserError(f"first_round_from: {source}: no such file")
        ids = {p.prompt_id for p in self.round_prompt_list(1)}
        rows = [r for r in read_jsonl(source) if r["prompt_id"] in ids]
        if {r["prompt_id"] for r in rows} != ids:
            missing = sorted(ids - {r["prompt_id"] for r in rows})
            raise UserError(
                f"first_round_from: {source} lacks prompts {missing[:5]} of round 1 (prompt ids are "
                "positions in this run's prompts file)"
            )
        write_jsonl(target, rows)

    # ----- shared pieces, built once ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.model, self.config.trust_remote_code)
        return self._tokenizer

    def reward(self, evaluation: bool = False):
        """The reward source (evaluation: eval_reward when given), loaded once and kept while it may stay."""

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

        if evaluation not in self._prompts:
            c = self.config
            source = c.eval_prompts if evaluation else c.prompts
            limit = c.max_eval_prompts if evaluation else c.max_prompts
            self._prompts[evaluation] = load_prompts(
                source, self.tokenizer, max_prompt_length=c.max_prompt_length, limit=limit, on_invalid=c.prompt_errors()
            )
        return self._prompts[evaluation]

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
    def sample(
        self,
        model_index: int,
        prompts,
        out_path: Path,
        n: int | None = None,
        stream: str = "train",
        evaluation: bool = False,
    ):
        """Sample from M_{model_index} into out_path, shard by shard (resumable), in this process or in a
        `cringe sample` subprocess. `stream` and model_index pick the seed, so no two stages share one."""

        c = self.config
        settings = {**c.sampling, **({"n": n} if n is not None else {})}
        settings["seed"] = derive_seed(settings.get("seed", c.seed), stream, model_index)
        if c.use_stage_processes():
            self._sample_in_subprocess(model_index, prompts, out_path, settings, evaluation)
            return self.run_dir.samples(out_path)
        sampling = SamplingConfig(**settings)
        samples = sample_to_file(
            prompts,
            sampling,
            out_path,
            lambda: open_sampler(
                c.backend,
                self.model_path(model_index),
                self.tokenizer,
                device=c.device,
                dtype=c.resolved_sampling_dtype(),
                trust_remote_code=c.trust_remote_code,
                engine_options=c.vllm,
                new_tokens=len(prompts) * sampling.n * sampling.max_new_tokens,
            ),
        )
        free_memory()
        return samples

    def _sample_in_subprocess(
        self, model_index: int, prompts, out_path: Path, settings: dict, evaluation: bool
    ) -> None:

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
            raise RuntimeError(
                f"the sampling stage would not pick the prompts {ids[:3]}...: a slice of {count} "
                f"prompts from {start} is not the round's"
            )
        stage = {
            "model": self.model_path(model_index),
            "tokenizer": c.model,
            "prompts": source,
            "output": str(out_path),
            "backend": c.backend,
            "device": c.device,
            "dtype": c.resolved_sampling_dtype(),
            "start": start,
            "count": count,
            "max_prompts": limit,
            "max_prompt_length": c.max_prompt_length,
            "trust_remote_code": c.trust_remote_code,
            **settings,
        }
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

        c = self.config
        spec = c.eval_reward if evaluation and c.eval_reward is not None else c.reward
        if c.use_stage_processes() and all(s.prompt is not None for s in samples):
            samples_path = out_path.parent / f".{out_path.stem}-input.jsonl"
            write_jsonl(samples_path, [s.to_dict() for s in samples])
            run_stage_process(
                "score",
                {"samples": str(samples_path), "output": str(out_path), "device": c.device, "reward": spec},
                out_path,
            )
            samples_path.unlink()
            return self.run_dir.scores(out_path)
        scores = score_to_file(self.reward(evaluation), samples, out_path, prompts)
        self.release_rewards()
        free_memory()
        return scores

    def pair(self, samples, scores, round_dir: Path) -> list[dict]:
        """The round's training rows, of the kind the loss needs (cringe.loop.pairing)."""

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
            raise UserError(
                f"{round_dir.name}: pairing kept no training rows of {report.prompts} prompts (dropped: "
                f"{report.dropped}); lower min_gap, set drop_truncated false, or sample more per prompt "
                "(sampling.n, sampling.temperature), then rerun: samples and scores are kept"
            )
        write_jsonl(round_dir / rundir.PAIRS, rows)
        return rows

    def train(self, k: int, rows: list[dict], round_dir: Path) -> None:
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
        trainer = CringeTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=self.tokenizer,
            ref_model=ref_model,
            peft_config=lora.peft_config(),
            callbacks=callbacks,
        )
        checkpoint = last_complete_checkpoint(self.run_dir.checkpoints(k))
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        publish_model(
            trainer,
            round_dir,
            base_model=self.model_path(k - 1),
            data=f"round {k} of `cringe iterate`: {len(rows)} rows from {round_dir / rundir.PAIRS}",
        )

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
            "model_name_or_path": self.model_path(k - 1),
            "dtype": default_dtype(c.dtype, c.resolved_device()),
            "trust_remote_code": c.trust_remote_code,
            "dataset": str(rows_path),
            "save_model_to": str(tmp),
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
        return prompts, samples, self._load_or_score(prompts, samples, paths[1])

    def _load_or_sample(self, model_index, prompts, path):
        if path.exists():
            return self.run_dir.samples(path)
        return self.sample(model_index, prompts, path, n=self.config.eval_samples, stream="eval", evaluation=True)

    def _load_or_score(self, prompts, samples, path) -> list[float]:
        """Held-out scores: read back when the file is there, else scored with the evaluation reward."""
        if path.exists():
            return self.run_dir.scores(path)
        return self.score(prompts, samples, path, evaluation=True)

    def _logprobs(self, k: int, samples) -> list[float]:
        """log M_k(sample) on the run's device, the model dropped afterwards (the next stage needs the memory)."""

        model = self.load_model(k, device=self.config.device)
        logps = completion_logprobs(model, samples, self.tokenizer.pad_token_id)
        del model
        free_memory()
        return logps

    def compare(self, k: int) -> dict:
        """M_k against M_0 on the held-out prompts (cringe.evaluate.compare's schema plus the round): both sampled
        and scored (each file kept, so a rerun continues), KL(M_k || M_0) from M_k's samples' log-probs. The one
        evaluation `cringe iterate`, `cringe evaluate` and the demo run."""
        round_dir = self.run_dir.round(k)
        round_dir.mkdir(parents=True, exist_ok=True)
        prompts, base_samples, base_scores = self.baseline()
        samples = self._load_or_sample(k, prompts, round_dir / rundir.EVAL_SAMPLES)
        scores = self._load_or_score(prompts, samples, round_dir / rundir.EVAL_SCORES)
        return {
            "round": k,
            **compare(
                samples,
                scores,
                base_samples,
                base_scores,
                policy_logps=self._logprobs(k, samples),
                reference_logps=self._logprobs(0, samples),
                seed=self.config.seed,
            ),
        }

    def evaluate(self, k: int) -> dict:
        """Round k's evaluation step: `compare`, added to M_k's model card, and eval.json (the step's marker)."""
        result = self.compare(k)
        add_evaluation_to_card(
            self.run_dir.model(k),
            comparison_table([result], "round", "round", baseline="M0")
            + f"\n\nHeld-out prompts: {result['n_prompts']} from `{self.config.eval_prompts}`.",
        )
        write_json(self.run_dir.file(k, rundir.EVAL), result)
        return result


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


def evaluation_table(evaluations: list[dict]) -> str:
    return comparison_table(evaluations, "round", "round", baseline="M0")
