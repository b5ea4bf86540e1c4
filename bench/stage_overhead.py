"""What a round of `cringe iterate` spends on glue (starting processes, loading models) against the stages' work.

    python bench/stage_overhead.py [--model smollm2-135m-instruct] [--prompts 16] [--output bench/results/X.md]

One round (sample -> score -> pair -> train -> evaluate) on the toy testbed, run twice in fresh directories: every
stage in this process (`stage_processes: false`, the CPU default), then sampling and scoring each in a process of
its own (`stage_processes: true`, the GPU default). In the in-process run, every model and tokenizer load is timed
(cringe.models.load_model / load_tokenizer wrapped), so each step's seconds split into loading and work. The
difference between the two runs, step by step, is what a stage process costs: interpreter start, imports, the
model loaded again. The bare start-up (`python -m cringe env`) is timed alone, for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from cringe import models
from cringe.loop import rundir
from cringe.loop.run import IterativeRun, load_config
from cringe.testbeds.toy import prompts as toy_prompts

STEPS = (rundir.SAMPLES, rundir.SCORES, rundir.PAIRS, rundir.MODEL, rundir.EVAL)


def write_config(work: Path, name: str, model: str, n_prompts: int, stage_processes: bool) -> Path:
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(n_prompts)))
    config = {
        "model": model,
        "prompts": str(prompts),
        "eval_prompts": str(prompts),
        "output_dir": str(work / name),
        "rounds": 1,
        "loss": "pairwise_cringe",
        "stage_processes": stage_processes,
        "backend": "transformers",
        "reward": {"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
        "sampling": {"n": 4, "max_new_tokens": 16, "batch_size": 64},
        "train": {
            "per_device_train_batch_size": 4,
            "num_train_epochs": 1,
            "learning_rate": 1e-5,
            "disable_tqdm": True,
            "save_strategy": "no",
            "logging_steps": 100,
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class LoadTimer:
    """Wraps cringe.models' loaders (and the loop's imported name for them) to time every load, by step."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.step = "setup"

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[self.step] += time.perf_counter() - t0

        return timed


def run_round(config: Path, timer: LoadTimer | None) -> dict[str, float]:
    run = IterativeRun(load_config(str(config), []))
    if timer is not None:
        original_step = run.step

        def step(k, name, work):
            timer.step = name
            return original_step(k, name, work)

        run.step = step
    run.run()
    return {s["step"]: s["seconds"] for s in run.run_dir.steps()}


def startup_seconds(tries: int = 3) -> float:
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cringe", "env"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--output", default=None, help="also write the table here (markdown)")
    a = parser.parse_args()
    models.resolve_path(a.model)  # a packaged model is converted once, before anything is timed
    work = Path(tempfile.mkdtemp(prefix="cringe-stage-overhead-"))
    timer = LoadTimer()
    for name in ("load_model", "load_tokenizer"):  # wherever the package holds the name, imported or not
        original = getattr(models, name)
        for module in [m for n, m in sys.modules.items() if n.startswith("cringe")]:
            if getattr(module, name, None) is original:
                setattr(module, name, timer.wrap(original))
    t0 = time.perf_counter()
    inside = run_round(write_config(work, "in-process", a.model, a.prompts, False), timer)
    inside_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    apart = run_round(write_config(work, "stage-processes", a.model, a.prompts, True), None)
    apart_wall = time.perf_counter() - t0
    start = startup_seconds()

    lines = [
        f"`python bench/stage_overhead.py --model {a.model} --prompts {a.prompts}` on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}; one round, {a.prompts} prompts x 4 samples "
        "x 16 tokens, evaluation on the same prompts.",
        "",
        "| step | in process: s | of which loading models/tokenizers | stage processes: s | difference |",
        "|---|---|---|---|---|",
    ]
    for step in STEPS:
        i, p = inside.get(step) or 0.0, apart.get(step) or 0.0
        lines.append(f"| {step} | {i:.1f} | {timer.seconds.get(step, 0.0):.1f} | {p:.1f} | {p - i:+.1f} |")
    loads = sum(timer.seconds.values())
    lines += [
        "",
        f"Round wall time: {inside_wall:.1f} s in process ({loads:.1f} s of it loading models and "
        f"tokenizers, {loads / inside_wall:.0%}), {apart_wall:.1f} s with stage processes "
        f"({apart_wall - inside_wall:+.1f} s). A bare `python -m cringe env` start: {start:.1f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
