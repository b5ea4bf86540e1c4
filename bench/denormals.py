"""Median and maximum CPU step time over several epochs on the same pairs: with and without flushing denormal
floats, fp32 weights, bf16 weights and bf16 autocast.

    python bench/denormals.py [--models smollm2,gemma3] [--configs all|fp32,fp32-noflush,...] [--epochs 3]

Why several epochs on the model's own samples: subnormal floats appear once the model is confident on what it
trains on (most of the vocabulary's probabilities underflow), which is what the loop's second and third epoch
over one round's pairs are. A benchmark of 5 steps on fresh random text (bench/train_step.py) never gets there,
which is how the 10-40x slowdown went unseen: so this one reports the maximum step as well as the median.

The pairs are round 1 of `examples/iterate_smollm2.yaml` as the loop makes them: the model's own samples of the
32 topic prompts (n 4, 32 new tokens, temperature 1, round 1's seed), scored by the word-list reward, best vs worst with
min_gap 0.01. Then every configuration trains the same pairs in a fresh process as that example's round does
(Pairwise Cringe, batch 8, lr 1e-4 constant, 3 epochs, chunked loss), timing each optimiser step. Flushing is
switched by CRINGE_FLUSH_DENORMAL in the child's environment: the setting a user has. Writes a markdown table
and the raw step times under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SPECS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m", "tiny": "tiny-random-llama"}  # tiny: a smoke run
# name: (weights dtype, bf16 autocast, flush)
CONFIGS = {
    "fp32": ("float32", False, True),
    "fp32-noflush": ("float32", False, False),
    "bf16-weights": ("bfloat16", False, True),
    "bf16-weights-noflush": ("bfloat16", False, False),
    "fp32+bf16-autocast": ("float32", True, True),
    "fp32+bf16-autocast-noflush": ("float32", True, False),
}


def make_pairs(model_name: str, out: Path) -> dict:
    """Round 1's pairs for this model, exactly as the loop would write them."""
    import torch

    from cringe.data import load_prompts
    from cringe.generation import SamplingConfig, TransformersSampler, derive_seed
    from cringe.loop.pairing import best_vs_worst
    from cringe.models import load_model_and_tokenizer
    from cringe.testbeds.toy import lexicon_positivity

    model, tokenizer = load_model_and_tokenizer(SPECS[model_name], dtype="float32")  # as the example samples
    prompts = load_prompts(str(ROOT / "examples/data/topic_prompts.jsonl"), tokenizer, max_prompt_length=128)
    sampling = SamplingConfig(
        n=4, max_new_tokens=32, temperature=1.0, top_p=1.0, top_k=0, batch_size=64, seed=derive_seed(0, "train", 0)
    )  # round 1's stream, as the loop seeds it
    start = time.perf_counter()
    samples = TransformersSampler(model, tokenizer).sample([p.ids for p in prompts], sampling, progress=False)
    texts = {i: p.text for i, p in enumerate(prompts)}
    scores = lexicon_positivity([texts[s.prompt_id] for s in samples], [s.completion for s in samples])
    rows, report = best_vs_worst(samples, scores, min_gap=0.01)
    out.write_text(
        "".join(json.dumps({k: r[k] for k in ("row", "prompt_ids", "completion_ids", "label")}) + "\n" for r in rows)
    )
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"pairs": len(rows), "sampling_s": time.perf_counter() - start, "pairing": report.as_dict()}


ALIASES = {
    "view",
    "t",
    "transpose",
    "expand",
    "permute",
    "reshape",
    "unsqueeze",
    "squeeze",
    "slice",
    "select",
    "as_strided",
    "detach",
    "alias",
    "unsafe_view",
    "split",
    "unbind",
    "narrow",
    "split_with_sizes",
}


def subnormal_outputs(trainer) -> dict:
    """One training step's forward and backward on the first batch, with flushing off, watching every operation's
    output: the share of floating-point elements that are subnormal, and the operations that made most of them.
    This is the work a CPU without flushing does slowly; CPU-independent, unlike the step time."""
    from collections import Counter

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from cringe.denormals import flush_denormals, wanted

    by_op: Counter = Counter()
    total = [0]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.split(".")[0].lstrip("_") in ALIASES:  # a view of a tensor already counted
                return out
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == "cpu":
                    a = t.detach().abs()
                    by_op[func.__name__] += int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())
                    total[0] += t.numel()
            return out

    flush_denormals(False)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    model.train()
    with Watch():
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    flush_denormals(wanted())
    top = ", ".join(f"{op} {n}" for op, n in by_op.most_common(3) if n)
    return {"share": sum(by_op.values()) / max(total[0], 1), "top": top or "-"}


def optimizer_subnormal_fraction(optimizer) -> float:
    """Share of the optimiser's state (AdamW's moments) that is subnormal."""
    import torch

    subnormal = total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
                a = value.detach().abs()
                subnormal += int(((a > 0) & (a < torch.finfo(value.dtype).tiny)).sum())
                total += value.numel()
    return subnormal / max(total, 1)


def worker(spec: dict) -> dict:
    """One configuration, in this (fresh) process; CRINGE_FLUSH_DENORMAL was set by the driver."""
    import torch
    from transformers import TrainerCallback

    from cringe.denormals import denormals_flushed, flush_denormals
    from cringe.models import load_model_and_tokenizer
    from cringe.trainer import CringeConfig, CringeTrainer

    flush_denormals()  # what `cringe train` does first
    model, tokenizer = load_model_and_tokenizer(SPECS[spec["model"]], dtype=spec["dtype"])
    rows = [json.loads(line) for line in Path(spec["pairs"]).read_text().splitlines()]
    times: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as tmp:
        config = CringeConfig(
            output_dir=tmp,
            loss="pairwise_cringe",
            per_device_train_batch_size=8,
            num_train_epochs=spec["epochs"],
            learning_rate=spec.get("learning_rate", 1e-4),
            lr_scheduler_type="constant",
            chunked_loss=True,
            use_cpu=True,
            bf16=spec["autocast"],
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
        )
        trainer = CringeTrainer(
            model=model, args=config, train_dataset=rows, processing_class=tokenizer, callbacks=[Timer()]
        )
        before = subnormal_outputs(trainer)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        after = subnormal_outputs(trainer)
        in_optimizer = optimizer_subnormal_fraction(trainer.optimizer)
    return {
        "flushed": denormals_flushed(),
        "threads": torch.get_num_threads(),
        "steps": times,
        "losses": losses,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "train_s": wall,
        "subnormal_before": before,
        "subnormal_after": after,
        "optimizer_subnormal": in_optimizer,
    }


def op_penalty() -> list[dict]:
    """This CPU's price of a subnormal operand, per operation: time on subnormal inputs / time on normal inputs,
    flushing off and on (best of 7). Intel cores take a microcode assist per subnormal; AMD Zen cores mostly
    do not: the training-step table's slowdown follows from this row."""
    import torch

    from cringe.denormals import flush_denormals, wanted

    w = torch.randn(1024, 1024)
    ops = {
        "x * 0.5 (elementwise)": lambda x: x * 0.5,
        "x @ W (matmul)": lambda x: x @ w,
        "exp(x - 100) (underflowing)": lambda x: torch.exp(x - 100.0),
    }
    inputs = {"subnormal": torch.full((2048, 1024), 1e-39), "normal": torch.full((2048, 1024), 1e-3)}

    def best(fn, x):
        fn(x)
        times = []
        for _ in range(7):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
        return min(times)

    out = []
    for flush in (False, True):
        flush_denormals(flush)
        for name, fn in ops.items():
            sub, norm = best(fn, inputs["subnormal"]), best(fn, inputs["normal"])
            out.append(
                {
                    "op": name,
                    "flush": "yes" if flush else "no",
                    "subnormal_ms": sub * 1e3,
                    "normal_ms": norm * 1e3,
                    "ratio": sub / norm,
                }
            )
    flush_denormals(wanted())
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_child(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{args}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--configs", default="all", help="all, none (the per-operation table only), or names")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--pairs",
        nargs="*",
        default=[],
        metavar="MODEL=FILE",
        help="train on a loop's round-N/pairs.jsonl instead of sampling them again",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--make-pairs", nargs=2, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    if a.make_pairs:
        print(json.dumps(make_pairs(a.make_pairs[0], Path(a.make_pairs[1]))))
        return

    penalty = op_penalty()
    penalty_table = (
        "| operation | flush denormals | subnormal input ms | normal input ms | ratio |\n"
        "|---|---|---|---|---|\n"
        + "".join(
            f"| {r['op']} | {r['flush']} | {r['subnormal_ms']:.2f} | {r['normal_ms']:.2f} | {r['ratio']:.1f} |\n"
            for r in penalty
        )
    )
    print(f"{cpu_name()}\n{penalty_table}", flush=True)
    configs = [] if a.configs == "none" else list(CONFIGS) if a.configs == "all" else a.configs.split(",")
    rows, raw = [], []
    work = Path(tempfile.mkdtemp(prefix="cringe-denormals-"))
    for model in a.models.split(",") if configs else []:
        given = dict(p.split("=", 1) for p in a.pairs)
        if model in given:
            pairs = Path(given[model])
            made = {"pairs": len(pairs.read_text().splitlines()), "source": str(pairs)}
        else:
            pairs = work / f"{model}-pairs.jsonl"
            made = run_child(["--make-pairs", model, str(pairs)], dict(os.environ))
        print(f"{model}: {made['pairs']} pairs from {made.get('source', 'round 1 sampled again')}", flush=True)
        for name in configs:
            dtype, autocast, flush = CONFIGS[name]
            spec = {
                "model": model,
                "pairs": str(pairs),
                "dtype": dtype,
                "autocast": autocast,
                "epochs": a.epochs,
                "learning_rate": a.learning_rate,
            }
            env = {**os.environ, "CRINGE_FLUSH_DENORMAL": "1" if flush else "0"}
            r = run_child(["--worker", json.dumps(spec)], env)
            assert r["flushed"] == flush, (name, r["flushed"])
            row = {
                "model": model,
                "config": name,
                "weights": dtype,
                "autocast": "bf16" if autocast else "-",
                "flush": "yes" if flush else "no",
                "steps": len(r["steps"]),
                "median_s": r["median_s"],
                "max_s": r["max_s"],
                "train_s": r["train_s"],
                "last_loss": r["losses"][-1] if r["losses"] else None,
                "subnormal": f"{r['subnormal_before']['share']:.2g} -> {r['subnormal_after']['share']:.2g}",
                "subnormal_ops": r["subnormal_after"]["top"],
                "optimizer_subnormal": f"{r['optimizer_subnormal']:.2g}",
            }
            rows.append(row)
            raw.append({**row, "pairs": made["pairs"], "step_s": r["steps"], "losses": r["losses"]})
            print(
                f"  {name:28s} median {r['median_s']:6.1f} s  max {r['max_s']:6.1f} s  "
                f"train {r['train_s']:6.0f} s  loss {row['last_loss']}  "
                f"subnormal {row['subnormal']} ({row['subnormal_ops']})  optimizer {row['optimizer_subnormal']}",
                flush=True,
            )

    import torch

    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    header = (
        "| model | weights | autocast | flush denormals | steps | median s/step | max s/step | train s | "
        "last loss | subnormal share of one step's outputs, before -> after | ops making most, after | "
        "of AdamW state, after |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {r['model']} | {r['weights']} | {r['autocast']} | {r['flush']} | {r['steps']} | {r['median_s']:.3g} | "
        f"{r['max_s']:.3g} | {r['train_s']:.3g} | {r['last_loss']:.4g} | {r['subnormal']} | "
        f"{r['subnormal_ops']} | {r['optimizer_subnormal']} |\n"
        for r in rows
    )
    print(table)
    a.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    (a.results_dir / f"denormals-{stamp}.md").write_text(
        f"# Step times over {a.epochs} epochs on round 1's pairs, with and without flushing denormals\n\n"
        f"`python bench/denormals.py {' '.join(sys.argv[1:])}` on {machine}.\n\n"
        + "## This CPU's price of a subnormal operand\n\n"
        + penalty_table
        + ("\n## Training steps\n\n" + table if rows else "")
    )
    (a.results_dir / f"denormals-{stamp}.json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
