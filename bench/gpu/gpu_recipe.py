"""A recipe (recipes/*.yaml) at its real shapes on one GPU, nothing downloaded: random-weight models with the
recipe's architectures (a Llama-3.2-1B-shaped policy, a Skywork-Reward-V2-Qwen3-0.6B-shaped classifier reward model
with a tokenizer of its own), 64 prompts, 2 rounds, every other recipe key kept (cringe.recipes.swap_in). Prints
seconds, tokens/s and GPU memory peak per stage and writes the table to the results folder.

    python bench/gpu/gpu_recipe.py [--recipe recipes/ultrafeedback_pairwise_cringe_1b.yaml] [--results-dir DIR]
    python bench/gpu/gpu_recipe.py --smoke --device cpu      (the same path with tiny models on a CPU)

Sampling uses vLLM when it imports (the recipe's backend; eager mode, to keep five engine starts inside the time
limit), else transformers' generate (said in the table). Each step prints as it finishes, so a run stopped by the
time limit still shows how far it got.
Sampling and scoring run as stage processes (bench/gpu/gpu_stage_probe.py reports each one's peak); training and the
evaluation's KL passes run in this process (torch.cuda.max_memory_allocated, reset after every step).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GiB = 2**30
WORDS = (
    "explain write compare list summarise the a of to and why how what plan recipe poem code story data model "
    "travel history science budget email letter review steps reasons example short detailed"
).split()


def write_prompts(work: Path, n: int, n_eval: int, seed: int = 0) -> tuple[Path, Path]:
    """UltraFeedback-shaped training rows and AlpacaFarm-format held-out rows, 20-120 words each."""
    rng = random.Random(seed)

    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + "?"

    train = work / "prompts.jsonl"
    rows = []
    for _ in range(n):
        p = text()
        rows.append(
            {
                "prompt": p,
                "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": "b"}],
            }
        )
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out = work / "eval.json"
    held_out.write_text(
        json.dumps(
            [{"instruction": text(), "input": "", "output": "reference", "generator": "ref"} for _ in range(n_eval)]
        )
    )
    return train, held_out


def build(work: Path, smoke: bool, device: str) -> dict:
    import torch

    from cringe.models import build_tiny_tokenizer
    from cringe.standins import build_model, build_reward_tokenizer, save_model

    dtype = torch.float32 if smoke else torch.bfloat16
    policy_tok, reward_tok = build_tiny_tokenizer(), build_reward_tokenizer()
    paths = {}
    for name, shape, tok, classifier in (
        ("policy", "tiny-llama" if smoke else "llama-3.2-1b", policy_tok, False),
        ("reward", "tiny-qwen3" if smoke else "qwen3-0.6b", reward_tok, True),
    ):
        model = build_model(shape, tok, classifier=classifier, dtype=dtype, device=device)
        paths[name] = str(save_model(model, tok, work / name))
        print(f"{name}: {shape}, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)
        del model
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ultrafeedback_pairwise_cringe_1b.yaml"))
    parser.add_argument("--work", default="/tmp/cringe-gpu-recipe")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny models: checks the path, measures nothing")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=256,
        help="the recipe's 1024 would mostly be cut anyway: a random policy never stops",
    )
    parser.add_argument("--train-steps", type=int, default=8)
    args = parser.parse_args()

    import shutil

    import torch
    import yaml
    from gpu_stage_probe import ProbedStage  # beside this script, which Python puts on the path

    from cringe.generation import vllm_build
    from cringe.loop.run import IterativeRun, parse_iterate_args
    from cringe.recipes import swap_in

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        sys.exit("bench/gpu/gpu_recipe.py needs a CUDA GPU (or --device cpu --smoke)")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    local = build(work, args.smoke, args.device)
    train_path, eval_path = write_prompts(work, args.prompts, args.eval_prompts)
    local.update(prompts=str(train_path), eval_prompts=str(eval_path))
    build_seconds = time.time() - t0
    backend = "vllm" if on_gpu and vllm_build() is not None else "transformers"
    values = swap_in(
        yaml.safe_load(Path(args.recipe).read_text()),
        local,
        work,
        rounds=args.rounds,
        round_prompts=args.prompts,
        eval_prompts=args.eval_prompts,
        steps=args.train_steps,
        max_new_tokens=args.new_tokens,
        on_gpu=on_gpu,
        backend=backend,
    )
    if backend == "vllm":
        # Five engine starts in two rounds (sampling, held-out sampling, M_0's): CUDA-graph capture would cost
        # most of the time budget, and the recipe's own runs pay it once per stage of an hour.
        values["vllm"] = {**values.get("vllm", {}), "enforce_eager": True}
    config_path = work / "recipe.yaml"
    config_path.write_text(yaml.safe_dump(values))

    # Stage processes report their own GPU peak through the probe (bench/gpu/gpu_stage_probe.py).
    probe_log = work / "stage-peaks.jsonl"
    probed = functools.partial(ProbedStage, log=probe_log)
    peaks = {}

    def on_step(k, step, seconds):
        if on_gpu:
            peaks[(k, step)] = torch.cuda.max_memory_allocated() / GiB
            torch.cuda.reset_peak_memory_stats()
        # As it happens: a run stopped by the time limit still shows how far it got and at what speed.
        print(
            f"[gpu_recipe] round {k} {step}: {seconds:.1f} s (in-process peak {peaks.get((k, step), 0.0):.2f} GiB)",
            flush=True,
        )

    run = IterativeRun(parse_iterate_args(["--config", str(config_path)]), on_step=on_step, stage_process=probed)
    started = time.time()
    run.run()
    total = time.time() - started
    table = stage_table(run, probe_log, peaks, on_gpu)
    gpu = torch.cuda.get_device_name() if on_gpu else "cpu"
    text = "\n".join(
        [
            f"# {Path(args.recipe).name} at its real shapes{' (smoke: tiny)' if args.smoke else ''}",
            "",
            f"`python bench/gpu/gpu_recipe.py{' --smoke --device cpu' if args.smoke else ''}` · {time.strftime('%Y-%m-%d %H:%M %Z')}"
            f" · {gpu} · torch {torch.__version__} · sampler {backend}",
            "",
            f"{args.rounds} rounds x {args.prompts} prompts x {values['sampling']['n']} samples x <= {args.new_tokens} new "
            f"tokens; {args.train_steps} {values['loss']} steps per round; evaluation on {args.eval_prompts} prompts. "
            f"Model build {build_seconds:.0f} s; the loop {total:.0f} s.",
            "",
            table,
        ]
    )
    print(text)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"gpu_recipe-{time.strftime('%Y-%m-%d')}-{'smoke-cpu' if args.smoke else 'gpu'}.md").write_text(
        text + "\n"
    )


def stage_table(run, probe_log: Path, peaks: dict, on_gpu: bool) -> str:
    """| round | step | seconds | tokens/s | GPU peak GiB | where | from state.json, the probe log and `peaks`."""
    from cringe.loop import rundir

    stage_peaks = [json.loads(line) for line in probe_log.read_text().splitlines()] if probe_log.exists() else []
    rows = ["| round | step | seconds | tokens/s | GPU peak GiB | where |", "|---|---|---|---|---|---|"]
    for s in run.run_dir.steps():
        k, step, seconds = s["round"], s["step"], s["seconds"] or 0.0
        probe = [p for p in stage_peaks if p["stage"].split(":")[1] == step and p["round_dir"] == f"round-{k}"]
        if probe:
            peak, where = probe[-1]["peak_gib"], f"stage process ({probe[-1]['device']})"
        else:
            peak, where = peaks.get((k, step)), "this process" if step != rundir.PAIRS else "no model"
        tokens = ""
        if step == rundir.SAMPLES:
            samples = run.run_dir.samples(run.run_dir.file(k, rundir.SAMPLES))
            tokens = f"{sum(x.num_tokens for x in samples) / max(seconds, 1e-9):.0f} generated"
        elif step == rundir.MODEL:
            log = run.run_dir.train_log(k)
            tokens = next(
                (f"{h['train_samples_per_second']:.1f} pairs/s" for h in log if "train_samples_per_second" in h), ""
            )
        rows.append(f"| {k} | {step} | {seconds:.1f} | {tokens} | {'' if peak is None else f'{peak:.2f}'} | {where} |")
    if not on_gpu:
        rows.append("\n(smoke run on a CPU: no GPU memory)")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
