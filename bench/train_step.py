"""Seconds per optimiser step and peak memory of each loss, side by side, on the same tokens.

    python bench/train_step.py [--models tiny,smollm2] [--pairs 8] [--prompt-tokens 64] [--completion-tokens 64]

Each configuration runs in a fresh subprocess so that its peak resident memory (VmHWM, reset after the policy
is loaded, so it counts the reference model, the optimiser state and the step itself) is its own. Time is the
median over `--steps` optimiser steps after `--warmup` steps. Every configuration sees the same 2 x pairs
sequences of prompt + completion tokens:
  * sft             cross-entropy on all 2 x pairs completions (one forward+backward over the tokens: the floor)
  * pairwise_cringe our Pairwise Cringe (no reference model)
  * dpo             our DPO with a frozen reference copy in memory (a second forward per step)
Prints a markdown table and writes it, with the raw numbers, under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


# ----- worker: one configuration in this process ------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_rss_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def synthetic_rows(vocab: int, pairs: int, prompt_tokens: int, completion_tokens: int, seed: int, sft: bool):
    import torch

    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(10, vocab - 10, (n,), generator=g).tolist()

    rows = []
    for i in range(pairs):
        prompt, chosen, rejected = ids(prompt_tokens), ids(completion_tokens), ids(completion_tokens)
        if sft:
            rows += [{"row": i, "prompt_ids": prompt, "completion_ids": [c], "label": True} for c in (chosen, rejected)]
        else:
            rows.append({"row": i, "prompt_ids": prompt, "completion_ids": [chosen, rejected], "label": None})
    return rows


def worker(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    from cringe.data import PreparedData, ValidationReport
    from cringe.models import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer
    from cringe.trainer import CringeConfig, CringeTrainer

    torch.set_num_threads(spec["threads"])
    if spec["model"] == "tiny":
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, hidden_size=256, num_layers=4)
    else:
        model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32")
    loss = spec["loss"]
    sft = loss == "sft"
    steps = spec["warmup"] + spec["steps"]
    pairs = spec["pairs"]
    rows = synthetic_rows(len(tokenizer), pairs * steps, spec["prompt_tokens"], spec["completion_tokens"], 0, sft)
    data = PreparedData("binary" if sft else "pairwise", rows, ValidationReport("synthetic", False, len(rows)))
    _reset_rss_peak()
    loaded_kb = _status_kb("VmRSS")
    config = CringeConfig(
        output_dir="/tmp/cringe-bench", loss=loss, per_device_train_batch_size=2 * pairs if sft else pairs,
        max_steps=steps, learning_rate=1e-6, lr_scheduler_type="constant", save_strategy="no", report_to="none",
        logging_steps=1000, disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
        **spec.get("extra", {}),
    )

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    trainer = CringeTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                            callbacks=[Timer()])
    trainer.train()
    measured = times[spec["warmup"]:]
    return {"seconds_per_step": statistics.median(measured), "steps": measured, "peak_rss_gb": _status_kb("VmHWM") / 2**20,
            "peak_above_loaded_gb": (_status_kb("VmHWM") - loaded_kb) / 2**20}


# ----- driver ----------------------------------------------------------------------------------------------

CONFIGS = [
    ("sft", "sft", {}),
    ("pairwise_cringe", "pairwise_cringe", {}),
    ("dpo (reference copy)", "dpo", {}),
]


def run_config(model: str, name: str, loss: str, extra: dict, args) -> dict:
    spec = {"model": model, "loss": loss, "extra": extra, "pairs": args.pairs, "prompt_tokens": args.prompt_tokens,
            "completion_tokens": args.completion_tokens, "warmup": args.warmup, "steps": args.steps,
            "threads": args.threads}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    header = (f"pairs={args.pairs}, prompt={args.prompt_tokens}, completion={args.completion_tokens} tokens, "
              f"median of {args.steps} steps after {args.warmup} warm-up, fp32, {machine}")
    print(header, flush=True)
    report = {"settings": vars(args), "machine": machine, "date": time.strftime("%Y-%m-%d"), "results": {}}
    lines = [f"# train_step benchmark ({report['date']})", "", header, ""]
    for model in args.models.split(","):
        results = {}
        for name, loss, extra in CONFIGS:
            results[name] = run_config(model, name, loss, extra, args)
            print(f"  {model:8s} {name:24s} {results[name]}", flush=True)
        report["results"][model] = results
        base = results["sft"]
        lines += [f"## {model}", "", "| configuration | s/step | x sft | peak RSS GB | x sft | peak above loaded policy GB | x sft |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | | |")
                continue
            lines.append(f"| {name} | {r['seconds_per_step']:.3f} | {r['seconds_per_step'] / base['seconds_per_step']:.2f} "
                         f"| {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / base['peak_rss_gb']:.2f} "
                         f"| {r['peak_above_loaded_gb']:.2f} | {r['peak_above_loaded_gb'] / base['peak_above_loaded_gb']:.2f} |")
        if "error" not in results["pairwise_cringe"] and "error" not in results["dpo (reference copy)"]:
            pc, dpo = results["pairwise_cringe"], results["dpo (reference copy)"]
            lines += ["", f"pairwise_cringe / dpo: time {pc['seconds_per_step'] / dpo['seconds_per_step']:.2f}x, "
                          f"peak RSS {pc['peak_rss_gb'] / dpo['peak_rss_gb']:.2f}x, "
                          f"peak above the loaded policy {pc['peak_above_loaded_gb'] / dpo['peak_above_loaded_gb']:.2f}x"]
        lines.append("")
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"train_step-{report['date']}"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
