"""How a comparison sets up each loop method: its training arguments, its `IterateConfig`, and M_0's samples that
every method's round 1 trains on and compares with. The sentiment demo (cringe.demo.pipeline) and the instruction
comparison (bench/research/instructions_compare.py) share it; they differ in their testbed (the base config:
model, prompt files, rewards, sampling), not in how a method is configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cringe.loop import rundir
from cringe.loop.run import IterateConfig, IterativeRun
from cringe.registry import loss_spec


@dataclass(frozen=True)
class Training:
    """What every method of a comparison trains with, so that only the loss differs."""

    learning_rate: float
    pairs_per_step: int
    epochs: float
    beta: float  # the DPO family's; losses without a reference model ignore it
    bf16: bool


def train_args(loss: str, training: Training) -> dict:
    spec = loss_spec(loss)
    # binary rows are single sequences: twice the rows per step keeps the sequences per step of a pair loss
    rows_per_pair = 2 if spec.data_kind == "binary" else 1
    args = {
        "per_device_train_batch_size": training.pairs_per_step * rows_per_pair,
        "learning_rate": training.learning_rate,
        "num_train_epochs": training.epochs,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 5,
        "save_strategy": "no",
        "bf16": training.bf16,
    }
    if spec.needs_reference:
        args.update(beta=training.beta, precompute_ref_logps=True)
    return args


def method_config(
    base: dict,
    output_dir: str | Path,
    *,
    loss: str,
    iterative: bool,
    rounds: int,
    round_prompts: int,
    training: Training,
    m0_dir: str | Path,
) -> IterateConfig:
    """An iterative method runs `rounds` rounds of `round_prompts` fresh prompts, a one-round method one round over
    every prompt: the same number of labelled samples. Round 1 trains on M_0's samples in m0_dir and every
    evaluation compares with M_0's held-out samples there (draw_m0)."""
    return IterateConfig(
        **base,
        output_dir=str(output_dir),
        loss=loss,
        rounds=rounds if iterative else 1,
        round_prompts=round_prompts if iterative else None,
        train=train_args(loss, training),
        first_round_from=str(m0_dir),
        baseline_from=str(m0_dir),
    )


def sample_and_score(run: IterativeRun, prompts, n: int | None = None, stream="train", evaluation=False) -> bool:
    """M_0's samples on `prompts` into the run directory's top (samples.jsonl), then their scores (scores.jsonl),
    each kept when already there; inside the run's session. True when the scores were written in this call."""
    samples_path, scores_path = run.dir / rundir.SAMPLES, run.dir / rundir.SCORES
    if not samples_path.exists():
        run.sample(0, prompts, samples_path, n=n, stream=stream, evaluation=evaluation)
    if scores_path.exists():
        return False
    run.score(prompts, run.run_dir.samples(samples_path), scores_path, evaluation=evaluation)
    return True


def draw_m0(
    base: dict,
    m0_dir: str | Path,
    on_samples: Callable[[float, bool], None] | None = None,
    on_held_out: Callable[[float], None] | None = None,
) -> IterativeRun:
    """M_0's samples on every training prompt, scored with the training reward, and on the held-out prompts,
    scored with the evaluation reward: drawn once into m0_dir (samples.jsonl and scores.jsonl at its top, as
    `cringe sample` / `cringe score` write them); a rerun keeps what is there. Inside the run's session, on_samples
    gets the seconds the training prompts' samples took and whether their scores were written in this call;
    on_held_out, the seconds of the held-out samples."""
    run = IterativeRun(IterateConfig(**base, output_dir=str(m0_dir), rounds=1))
    with run.session():
        t0 = time.time()
        scored_now = sample_and_score(run, run.prompts())
        if on_samples is not None:
            on_samples(time.time() - t0, scored_now)
        t0 = time.time()
        run.baseline()
        if on_held_out is not None:
            on_held_out(time.time() - t0)
    return run
