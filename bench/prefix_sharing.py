"""Prefix-shared rows against the plain batch: forward + backward of the Pairwise Cringe loss, side by side.

    python bench/prefix_sharing.py [--shapes long,quick,hh,uf] [--pairs 8] [--repeats 3] [--out PATH]
    python bench/prefix_sharing.py --trainer [--shapes ...] [--pairs 4] [--warmup 1] [--steps 2] [--out PATH]

The plain variant is the trainer's chunked path: 2B rows (prompt + chosen, then prompt + rejected), right-padded,
`cringe.chunked.completion_hidden`. The shared variant is one row per pair, [prompt | chosen | rejected]
(`cringe.prefix_sharing.build_shared_rows`, `answer_hidden`). Both then run the same loss on the answer positions
only: the fused, chunked LM head + log-softmax of `cringe.chunked.pairwise_cringe_loss`, and backward through the
whole model; collation is inside the timed step for both. SmolLM2-135M-Instruct (the packaged offline copy),
fp32, sdpa attention, token ids drawn at random (the lengths are exact).

Time: per shape, the variants alternate (plain, shared, plain, ...) in this one process after one warm-up step
each; the median of `--repeats` steps is reported. Memory: each (shape, variant) runs again in a fresh subprocess
(two steps: the first allocates the gradients), and its peak resident set (VmHWM, reset after the model is loaded)
is reported, with the growth over the resident set at the reset. Plain-equivalent tokens/s counts the tokens the
plain batch feeds the model (pairs x (2 prompt + chosen + rejected)) for both variants: the same work delivered.
Writes a markdown table to bench/results/prefix_sharing-<date>-<cpu>.md and the raw numbers next to it (.json);
a later run into the same file (same settings) adds its shapes, so the shapes can be measured a few at a time.

`--trainer`: whole optimiser steps through `CringeTrainer` (Pairwise Cringe, its defaults: the chunked loss, AdamW),
`prefix_sharing` false against true, everything else equal. Each (shape, variant) runs in a fresh subprocess: the
median of `--steps` step times (a TrainerCallback around each step, collation included) after `--warmup` steps,
and the peak resident set over all its steps (reset after the model is loaded; the first step allocates Adam's
state). Writes bench/results/prefix_sharing-trainer-<date>-<cpu>.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cringe.machine import cpu_label, cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m-instruct"
# name: (prompt, chosen, rejected, what it stands for)
SHAPES = {
    "long": (160, 32, 32, "long-prompt chat (prompt/answer 5)"),
    "quick": (48, 16, 16, "the quick preset's pairs (3)"),
    "hh": (128, 64, 64, "HH-like (2)"),
    "uf": (100, 250, 250, "UltraFeedback-like (0.4)"),
}
VARIANTS = ("plain", "shared")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def pair_rows(vocab: int, pairs: int, shape: str, seed: int = 0) -> list[dict]:
    import torch

    prompt, chosen, rejected, _ = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(100, vocab, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(prompt), "completion_ids": [ids(chosen), ids(rejected)]} for _ in range(pairs)]


def load():
    import torch

    from cringe.models import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(MODEL, dtype="float32")
    model.config._attn_implementation = "sdpa"
    model.train()
    return model, tokenizer


def step(model, pad_token_id: int, rows: list[dict], variant: str) -> float:
    """One forward + backward; returns the loss."""
    import torch

    from cringe import chunked as C
    from cringe import prefix_sharing as P
    from cringe.data.collate import Collator

    model.zero_grad(set_to_none=True)
    if variant == "plain":
        batch = Collator(pad_token_id=pad_token_id)(rows)
        hidden, targets, mask = C.completion_hidden(
            model, model.get_decoder(), batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]
        )
        seq_index = C.row_of_position(mask)
    else:
        hidden, targets, seq_index = P.answer_hidden(model, P.build_shared_rows(rows, pad_token_id))
    head = model.get_output_embeddings()
    generator = torch.Generator().manual_seed(0)
    loss, _ = C.pairwise_cringe_loss(
        hidden, head.weight, head.bias, targets, seq_index, len(rows), alpha=0.2, generator=generator
    )
    loss.backward()
    return float(loss.detach())


def measure_memory(shape: str, variant: str, pairs: int) -> dict:
    """In this (fresh) process: peak resident set over two steps, reset after the model is loaded."""
    model, tokenizer = load()
    rows = pair_rows(len(tokenizer), pairs, shape)
    base_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM back to the current RSS
    for _ in range(2):
        step(model, tokenizer.pad_token_id, rows, variant)
    peak_kb = _status_kb("VmHWM")
    return {"peak_mib": peak_kb / 1024, "growth_mib": (peak_kb - base_kb) / 1024}


def trainer_worker(shape: str, variant: str, pairs: int, warmup: int, steps: int) -> dict:
    """In this (fresh) process: `warmup + steps` CringeTrainer steps of one variant; step times and peak RSS."""
    from transformers import TrainerCallback

    from cringe.data import PreparedData, ValidationReport
    from cringe.trainer import CringeConfig, CringeTrainer

    model, tokenizer = load()
    rows = pair_rows(len(tokenizer), pairs * (warmup + steps), shape)
    data = PreparedData("pairwise", rows, ValidationReport("bench", False, kept=len(rows)))
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    args = CringeConfig(
        output_dir="/tmp/cringe-bench-prefix-sharing",
        loss="pairwise_cringe",
        prefix_sharing=variant == "shared",
        per_device_train_batch_size=pairs,
        max_steps=warmup + steps,
        max_prompt_length=None,
        max_completion_length=None,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    trainer = CringeTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Timer()])
    assert trainer.share_prefix == (variant == "shared")
    base_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    trainer.train()
    peak_kb = _status_kb("VmHWM")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "seconds": times[warmup:],
        "warmup_seconds": times[:warmup],
        "loss": losses[0],
        "peak_mib": peak_kb / 1024,
        "growth_mib": (peak_kb - base_kb) / 1024,
    }


def render_trainer(saved: dict) -> str:
    meta, results = saved["meta"], {s: saved["results"][s] for s in SHAPES if s in saved["results"]}
    commands = "; ".join(f"`python bench/prefix_sharing.py {c}`" for c in saved["commands"])
    lines = [
        "# Prefix sharing through CringeTrainer: whole optimiser steps, plain against shared",
        "",
        f"Commands: {commands}  ",
        f"Date: {saved['date']}; CPU: {meta['cpu']} ({meta['cores']} threads); torch {meta['torch']}, "
        f"transformers {meta['transformers']}",
        "",
        f"SmolLM2-135M-Instruct, fp32, sdpa, Pairwise Cringe with the trainer's defaults (chunked loss, AdamW), "
        f"{meta['pairs']} pairs per step; `prefix_sharing` false (plain) against true (shared). A fresh process per "
        f"row: median of {meta['steps']} step times after {meta['warmup']} warm-up step(s) (collation, forward, "
        "backward, optimiser); peak RSS over all its steps, reset after the model is loaded.",
        "",
        "| shape (prompt / chosen / rejected) | variant | s / step | pairs/s | plain-equiv. tokens/s | speed-up "
        "| peak RSS MiB (growth) | first loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, r in results.items():
        prompt, chosen, rejected, label = SHAPES[shape]
        plain_tokens = meta["pairs"] * (2 * prompt + chosen + rejected)
        base = statistics.median(r["plain"]["seconds"])
        for v in VARIANTS:
            s = statistics.median(r[v]["seconds"])
            lines.append(
                f"| {label}: {prompt} / {chosen} / {rejected} | {v} | {s:.2f} | {meta['pairs'] / s:.2f} "
                f"| {plain_tokens / s:.0f} | {base / s:.2f}x | {r[v]['peak_mib']:.0f} ({r[v]['growth_mib']:+.0f}) "
                f"| {r[v]['loss']:.6f} |"
            )
    lines += [
        "",
        "Goals (issue 29): >= 1.4x on the long-prompt shape, >= 1.25x on the quick preset's pairs, >= 0.98x on the "
        "UltraFeedback-like one. The first step's loss is the same for both variants: the same objective.",
        "",
        "Per-step seconds (warm-up in brackets):",
        "",
        *(
            f"- {shape} {v}: [{', '.join(f'{t:.2f}' for t in r[v]['warmup_seconds'])}] "
            f"{', '.join(f'{t:.2f}' for t in r[v]['seconds'])}"
            for shape, r in results.items()
            for v in VARIANTS
        ),
        "",
    ]
    return "\n".join(lines)


def measure_time(model, tokenizer, shape: str, pairs: int, repeats: int) -> dict:
    rows = pair_rows(len(tokenizer), pairs, shape)
    times = {v: [] for v in VARIANTS}
    losses = {}
    for v in VARIANTS:  # warm-up
        losses[v] = step(model, tokenizer.pad_token_id, rows, v)
    for _ in range(repeats):
        for v in VARIANTS:
            start = time.perf_counter()
            step(model, tokenizer.pad_token_id, rows, v)
            times[v].append(time.perf_counter() - start)
    return {"seconds": times, "loss": losses}


def render(saved: dict) -> str:
    meta, results = saved["meta"], {s: saved["results"][s] for s in SHAPES if s in saved["results"]}
    commands = "; ".join(f"`python bench/prefix_sharing.py {c}`" for c in saved["commands"])
    lines = [
        "# Prefix-shared rows against the plain batch (forward + backward)",
        "",
        f"Commands: {commands}  ",
        f"Date: {saved['date']}; CPU: {meta['cpu']} ({meta['cores']} threads); torch {meta['torch']}, "
        f"transformers {meta['transformers']}",
        "",
        f"SmolLM2-135M-Instruct, fp32, sdpa, {meta['pairs']} pairs per step; Pairwise Cringe through the fused "
        f"chunked head on answer positions only; median of {meta['repeats']} steps per variant, alternating "
        "plain/shared in one process after a warm-up step each. Peak RSS: a fresh process per variant, two steps.",
        "",
        "| shape (prompt / chosen / rejected) | variant | s / step | pairs/s | plain-equiv. tokens/s | speed-up "
        "| peak RSS MiB (growth) | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, r in results.items():
        prompt, chosen, rejected, label = SHAPES[shape]
        plain_tokens = meta["pairs"] * (2 * prompt + chosen + rejected)
        base = statistics.median(r["seconds"]["plain"])
        for v in VARIANTS:
            s = statistics.median(r["seconds"][v])
            mem = r["memory"].get(v)
            mem_text = f"{mem['peak_mib']:.0f} ({mem['growth_mib']:+.0f})" if mem else "n/a"
            lines.append(
                f"| {label}: {prompt} / {chosen} / {rejected} | {v} | {s:.2f} | {meta['pairs'] / s:.2f} "
                f"| {plain_tokens / s:.0f} | {base / s:.2f}x | {mem_text} | {r['loss'][v]:.6f} |"
            )
    lines += [
        "",
        "Goals (issue 29): >= 1.4x on the long-prompt shape, >= 1.25x on the quick preset's pairs, >= 0.98x on the "
        "UltraFeedback-like one. The loss column is the same for both variants: the same objective was computed.",
        "",
        "Per-step seconds (in order):",
        "",
        *(
            f"- {shape} {v}: {', '.join(f'{t:.2f}' for t in r['seconds'][v])}"
            for shape, r in results.items()
            for v in VARIANTS
        ),
        "",
    ]
    return "\n".join(lines)


def _worker(*flags: str) -> dict:
    """Runs this script with `flags` in a fresh process; its last line of output is the JSON result."""
    out = subprocess.run([sys.executable, __file__, *flags], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_raw(shapes: list[str], args) -> dict:
    model, tokenizer = load()
    results = {}
    for shape in shapes:
        results[shape] = measure_time(model, tokenizer, shape, args.pairs, args.repeats)
        results[shape]["memory"] = {}
        if not args.no_memory:
            for v in VARIANTS:
                results[shape]["memory"][v] = _worker("--memory-worker", shape, v, "--pairs", str(args.pairs))
        print(shape, json.dumps(results[shape]), flush=True)
    return results


def measure_trainer(shapes: list[str], args) -> dict:
    results = {}
    for shape in shapes:
        counts = ("--pairs", str(args.pairs), "--warmup", str(args.warmup), "--steps", str(args.steps))
        results[shape] = {v: _worker("--trainer-worker", shape, v, *counts) for v in VARIANTS}
        print(shape, json.dumps(results[shape]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 8; --trainer: 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainer", action="store_true", help="whole CringeTrainer steps, a process per variant")
    parser.add_argument("--warmup", type=int, default=1, help="--trainer: untimed steps first")
    parser.add_argument("--steps", type=int, default=2, help="--trainer: timed steps")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--out", default=None, help="the markdown file (default under bench/results/)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--trainer-worker", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs is None:
        args.pairs = 4 if args.trainer or args.trainer_worker else 8
    if args.trainer_worker:
        print(json.dumps(trainer_worker(*args.trainer_worker, args.pairs, args.warmup, args.steps)))
        return
    if args.memory_worker:
        print(json.dumps(measure_memory(*args.memory_worker, args.pairs)))
        return

    import torch
    import transformers

    from cringe.durable.files import read_json, write_atomic, write_json

    shapes = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")
    results = measure_trainer(shapes, args) if args.trainer else measure_raw(shapes, args)
    cpu = cpu_model()
    date = datetime.date.today().isoformat()
    tag = cpu_label()
    name = "prefix_sharing-trainer" if args.trainer else "prefix_sharing"
    out = Path(args.out) if args.out else RESULTS / f"{name}-{date}-{tag}.md"
    raw = out.with_suffix(".json")
    # Shapes measured by earlier runs into the same file are kept (a run per few shapes keeps each job short);
    # every run must have used the same settings.
    meta = {
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pairs": args.pairs,
        **({"warmup": args.warmup, "steps": args.steps} if args.trainer else {"repeats": args.repeats}),
    }
    saved = read_json(raw) if raw.exists() else {"meta": meta, "commands": [], "results": {}}
    if saved["meta"] != meta:
        raise SystemExit(f"{raw} was measured with other settings: {saved['meta']}; pass another --out")
    saved["results"].update(results)
    saved["commands"].append(" ".join(sys.argv[1:]))
    saved["date"] = date
    write_json(raw, saved)
    text = render_trainer(saved) if args.trainer else render(saved)
    write_atomic(out, text)
    print(text)


if __name__ == "__main__":
    main()
