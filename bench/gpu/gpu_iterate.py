"""Two rounds of `cringe iterate` on one GPU with a random ~1B Llama-3-style policy and a random classifier reward
model: seconds per stage, sampling tokens per second, GPU memory peak per stage, and a check that every stage ran
on the GPU. Nothing is downloaded (the byte-level test tokenizer, random weights).

    python bench/gpu/gpu_iterate.py [--results-dir bench/results] [--prompts 256] [--new-tokens 128]
    python bench/gpu/gpu_iterate.py --smoke --device cpu        (the same path on a CPU with a tiny model, seconds)

Sampling and scoring run in stage processes (the loop's default on a GPU) through the probing executor of
bench/gpu/gpu_stage_probe.py, which runs each step's job and reports the process's peak GPU memory.
Training and the evaluation's KL passes run in this process: their peak is torch.cuda.max_memory_allocated,
reset after every step.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GiB = 2**30


def build_models(work: Path, smoke: bool, device: str) -> tuple[Path, Path]:
    """A random Llama-3-style policy (~1.2B parameters: hidden 2048, 20 layers, GQA 32/8 heads) and a random
    Llama sequence classifier as the reward model, both saved in bf16 (fp32 for --smoke) with the test tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from cringe.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    dtype = torch.float32 if smoke else torch.bfloat16
    shape = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        if smoke
        else dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=20,
            num_attention_heads=32,
            num_key_value_heads=8,
        )
    )
    common = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    paths = []
    for name, cls, extra in (
        ("policy", LlamaForCausalLM, shape),
        (
            "reward",
            LlamaForSequenceClassification,
            dict(
                hidden_size=256,
                intermediate_size=512,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                num_labels=1,
            ),
        ),
    ):
        torch.manual_seed(0)
        with torch.device(device):  # initialise where it runs: seconds on a GPU, not minutes on the CPU
            model = cls(LlamaConfig(**common, **extra)).to(dtype)
        path = work / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {path}", flush=True)
        del model
        paths.append(path)
    return paths[0], paths[1]


def write_prompts(path: Path, n: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    words = "the a model review film story good bad plot actor scene music long short very not".split()
    rows = [{"prompt": " ".join(rng.choice(words) for _ in range(12))} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/cringe-gpu-iterate")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny models: checks the path, measures nothing")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=16)
    args = parser.parse_args()

    import shutil

    import torch
    from gpu_stage_probe import ProbedStage  # beside this script, which Python puts on the path

    from cringe.loop import rundir
    from cringe.loop.run import IterateConfig, IterativeRun

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu/gpu_iterate.py needs a CUDA GPU (or --device cpu --smoke)")
    on_gpu = args.device.startswith("cuda")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    policy, reward = build_models(work, args.smoke, args.device)
    build_seconds = time.time() - t0

    # Stage processes report their own GPU peak through the probe (bench/gpu/gpu_stage_probe.py).
    probe_log = work / "stage-peaks.jsonl"
    probed = functools.partial(ProbedStage, log=probe_log)

    config = IterateConfig(
        model=str(policy),
        prompts=str(write_prompts(work / "prompts.jsonl", args.prompts, 0)),
        eval_prompts=str(write_prompts(work / "eval_prompts.jsonl", args.eval_prompts, 1)),
        output_dir=str(work / "run"),
        rounds=2,
        loss="pairwise_cringe",
        device=args.device,
        backend="transformers",
        stage_processes=True,
        reward={
            "type": "model",
            "path": str(reward),
            "input": "prompt+completion",
            "max_length": 512,
            "batch_size": 64,
        },
        sampling={"n": 4, "max_new_tokens": args.new_tokens, "batch_size": 256 if on_gpu else 16},
        train={
            "per_device_train_batch_size": 8,
            "max_steps": args.train_steps,
            "learning_rate": 1e-5,
            "bf16": on_gpu,
            "gradient_checkpointing": on_gpu,
            "save_strategy": "no",
            "logging_steps": 4,
            "disable_tqdm": True,
            **({} if on_gpu else {"use_cpu": True}),
        },
    )
    peaks: dict[tuple[int, str], float] = {}

    def reset_peak():
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()

    def on_step(k, step, seconds):
        if on_gpu:
            peaks[(k, step)] = torch.cuda.max_memory_allocated() / GiB
        reset_peak()

    reset_peak()
    run = IterativeRun(config, on_step=on_step, stage_process=probed)
    started = time.time()
    run.run()
    total = time.time() - started

    stage_peaks = [json.loads(line) for line in probe_log.read_text().splitlines()] if probe_log.exists() else []
    rows, failures = [], []
    for s in run.run_dir.steps():
        k, step = s["round"], s["step"]
        in_process = step in (rundir.MODEL, rundir.EVAL)
        if step == rundir.PAIRS:
            peak, device_seen = None, "no model"
        elif in_process:
            peak = peaks.get((k, step))
            device_seen = "cuda" if on_gpu and peak and peak > 0.5 else "cpu?"
        else:
            probe = [p for p in stage_peaks if p["stage"].split(":")[1] == step and p["round_dir"] == f"round-{k}"]
            peak = probe[-1]["peak_gib"] if probe else None
            device_seen = probe[-1]["device"] if probe else "?"
        tokens = ""
        if step == rundir.SAMPLES:
            samples = run.run_dir.samples(run.run_dir.file(k, rundir.SAMPLES))
            tokens = f"{sum(x.num_tokens for x in samples) / max(s['seconds'] or 0, 1e-9):.0f}"
        rows.append(
            f"| {k} | {step} | {s['seconds'] or 0:.1f} | {'' if peak is None else f'{peak:.2f}'} | {device_seen} | {tokens} |"
        )
        if on_gpu and step != rundir.PAIRS and not device_seen.startswith(("cuda", "NVIDIA")):
            failures.append(f"round {k} {step} did not run on the GPU")
    eval_stages = [p for p in stage_peaks if p["stage"].split(":")[1].startswith(("eval_", "baseline_"))]
    gpu = torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu"
    table = "\n".join(
        [
            f"# cringe iterate on one GPU: 2 rounds, random 1.2B policy{' (smoke: tiny)' if args.smoke else ''}",
            "",
            f"`python bench/gpu/gpu_iterate.py{' --smoke --device cpu' if args.smoke else ''}` · "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')} · {gpu} · torch {torch.__version__}",
            "",
            f"{args.prompts} prompts x 4 samples x {args.new_tokens} new tokens per round (transformers sampler, "
            f"batch 256 sequences), reward model scoring, {args.train_steps} Pairwise Cringe steps of 8 pairs (bf16 "
            f"autocast, gradient checkpointing), evaluation on {args.eval_prompts} prompts (KL passes in this process). "
            f"Model build {build_seconds:.0f} s; the loop {total:.0f} s.",
            "",
            "| round | step | seconds | GPU peak GiB | device | sampling tokens/s (stage wall time) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Evaluation-side stage processes (held-out sampling and scoring inside the eval.json step): "
            + "; ".join(f"{p['stage']} {p['peak_gib']:.2f} GiB on {p['device']}" for p in eval_stages),
            "",
            "Checks: " + ("every stage ran on the GPU" if not failures else "; ".join(failures))
            if on_gpu
            else "Checks: smoke run on a CPU (no GPU check)",
        ]
    )
    print(table)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    tag = "smoke-cpu" if args.smoke else "gpu"
    (results / f"gpu_iterate-{time.strftime('%Y-%m-%d')}-{tag}.md").write_text(table + "\n")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
