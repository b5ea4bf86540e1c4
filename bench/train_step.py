"""Seconds per optimiser step and peak memory of each loss, side by side, on the same data.

    python bench/train_step.py [--models tiny,smollm2,gemma3] [--configs all|name,name] [--pairs 8]
                               [--prompt-tokens 64] [--completion-tokens 64] [--steps 5] [--warmup 1]

Each configuration runs in a fresh subprocess so that its peak resident memory (VmHWM, reset after the policy
is loaded, so it counts the reference model, the optimiser state and every step, warm-up included) is its own;
on a GPU, torch.cuda.max_memory_allocated likewise. Time is the median over `--steps` optimiser steps after
`--warmup` steps. Measure memory over at least two steps: the first one allocates the optimiser state, so a
one-step peak flatters whichever configuration holds gradients and Adam's moments at the same time. Every configuration sees the same text: `pairs`
prompts with a chosen and a rejected completion each, made of random vocabulary tokens (so the lengths are
exact for our tokenisation; TRL tokenises the same text its own way, within a token or two):
  * sft                    cross-entropy on all 2 x pairs completions: one forward+backward over the same
                           tokens, the floor any preference loss is measured against
  * pairwise_cringe        our Pairwise Cringe (no reference model)
  * dpo (ref copy)         our DPO with a frozen reference copy in memory (a second forward per step)
  * dpo (precomputed ref)  our DPO, reference log-probs computed once before training (not timed per step)
  * ... chunked            the same loss with `chunked_loss=True` (LM head fused, chunked over tokens)
  * ... bf16 grad ckpt     bf16 autocast and gradient checkpointing (TRL's DPOConfig defaults)
  * ... optim-in-bwd       `optimizer_in_backward=True` (each parameter stepped in backward; no clipping)
  * trl dpo (...)          TRL's DPOTrainer (trl installed: `pip install -e .[bench]`), default reference
                           handling and with precompute_ref_log_probs. Note TRL's DPOConfig defaults to
                           gradient_checkpointing=True and bf16=True (autocast, also on the CPU), which our rows
                           do not use; "fp32; no grad ckpt" turns both off for a like-for-like row
Models: tiny (random 4-layer Llama), smollm2 (SmolLM2-135M-Instruct, 49k vocabulary), gemma3 (Gemma-3-270M,
262k vocabulary), llama128k-1b (random 1.5B Llama-3-style, 128k vocabulary, untied head; GPU: bench/gpu/gpu.sh), llama128k-smoke (the same
shape of model, tiny, to check the path on a CPU); fp32 on the CPU, bf16 with --device cuda. Prints a markdown table and writes it, with the raw numbers, under
bench/results/.
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


def synthetic_text(tokenizer, pairs: int, prompt_tokens: int, completion_tokens: int, seed: int) -> list[dict]:
    """Rows of text decoded from random vocabulary tokens; re-tokenised, each part has about the requested
    length (the driver prints the measured counts)."""
    import random

    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(min(len(tokenizer), 30000)) if i not in special]
    if len(tokenizer) < 1000:  # the byte tokenizer: bytes >= 128 alone decode to U+FFFD (3 bytes); keep ASCII
        vocab = [i for i in vocab if tokenizer.encode(tokenizer.decode([i]), add_special_tokens=False) == [i]]

    def text(n):
        return tokenizer.decode([rng.choice(vocab) for _ in range(n)])

    return [
        {"prompt": text(prompt_tokens), "chosen": text(completion_tokens), "rejected": text(completion_tokens)}
        for _ in range(pairs)
    ]


def random_llama(tokenizer, size: str):
    """A randomly initialised Llama-3-style model with a 128k vocabulary (the byte tokenizer writes the text;
    the LM head is as wide as Llama-3's either way). size: '1b' (~1.2B parameters) or 'smoke' (tiny, for CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = {
        "1b": dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
        ),
        "smoke": dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        ),
    }[size]
    config = LlamaConfig(
        vocab_size=128256,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(0)
    if torch.cuda.is_available() and size != "smoke":  # initialised on the GPU in bf16: seconds instead of a minute
        with torch.device("cuda"):
            return LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    return LlamaForCausalLM(config)


def load(model_name: str):
    from cringe.models import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer

    if model_name == "tiny":
        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(tokenizer, hidden_size=256, num_layers=4), tokenizer
    if model_name.startswith("llama128k-"):
        tokenizer = build_tiny_tokenizer()
        return random_llama(tokenizer, model_name.split("-", 1)[1]), tokenizer
    spec = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}[model_name]
    return load_model_and_tokenizer(spec, dtype="float32")


def timer_callback(times: list):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    return Timer()


COMMON = dict(
    learning_rate=1e-6,
    lr_scheduler_type="constant",
    save_strategy="no",
    report_to="none",
    logging_steps=1000,
    disable_tqdm=True,
    seed=0,
    dataloader_num_workers=0,
)


def _device_args(spec: dict) -> dict:
    if spec["device"] == "cuda":
        return {"bf16": True, "use_cpu": False}
    return {"use_cpu": True}


def _peak_memory(spec: dict, loaded_kb: int) -> dict:
    if spec["device"] == "cuda":
        import torch

        return {
            "peak_rss_gb": torch.cuda.max_memory_allocated() / 2**30,
            "peak_above_loaded_gb": (torch.cuda.max_memory_allocated() - spec["_loaded_cuda"]) / 2**30,
        }
    return {
        "peak_rss_gb": _status_kb("VmHWM") / 2**20,
        "peak_above_loaded_gb": (_status_kb("VmHWM") - loaded_kb) / 2**20,
    }


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    model, tokenizer = load(spec["model"])
    if spec["device"] == "cuda":
        model = model.to("cuda", torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
        spec["_loaded_cuda"] = torch.cuda.memory_allocated()
    steps = spec["warmup"] + spec["steps"]
    pairs = spec["pairs"]
    rows = synthetic_text(tokenizer, pairs * steps, spec["prompt_tokens"], spec["completion_tokens"], seed=0)
    times: list[float] = []
    _reset_rss_peak()
    loaded_kb = _status_kb("VmRSS")
    if spec["loss"].startswith("trl"):
        import copy

        import datasets
        from trl import DPOConfig, DPOTrainer

        # TRL's own defaults differ from TrainingArguments': gradient_checkpointing=True and bf16=True. The
        # "matched" configuration turns both off to compare like for like with our fp32, no-checkpointing rows.
        matched = {"gradient_checkpointing": False, "bf16": False} if spec["loss"] == "trl_matched" else {}
        config = DPOConfig(
            output_dir="/tmp/cringe-bench-trl",
            per_device_train_batch_size=pairs,
            max_steps=steps,
            beta=0.1,
            max_length=None,
            precompute_ref_log_probs=spec["loss"] == "trl_precompute",
            **COMMON,
            **{**_device_args(spec), **matched},
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=config,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[timer_callback(times)],
        )
    else:
        from cringe.trainer import CringeConfig, CringeTrainer

        loss = spec["loss"]
        if loss == "sft":  # both completions of every pair as SFT targets: the same tokens as the pair losses
            rows = [
                {"prompt": r["prompt"], "completion": c, "label": True}
                for r in rows
                for c in (r["chosen"], r["rejected"])
            ]
        config = CringeConfig(
            output_dir="/tmp/cringe-bench",
            loss=loss,
            per_device_train_batch_size=2 * pairs if loss == "sft" else pairs,
            max_steps=steps,
            max_prompt_length=None,
            max_completion_length=None,
            **{**COMMON, **_device_args(spec), **spec.get("extra", {})},
        )
        trainer = CringeTrainer(
            model=model, args=config, train_dataset=rows, processing_class=tokenizer, callbacks=[timer_callback(times)]
        )
    trainer.train()
    measured = times[spec["warmup"] :]
    tokens = None
    if not spec["loss"].startswith("trl"):
        data = trainer.train_dataset
        n_completions = len(data.rows[0]["completion_ids"])
        tokens = sum(
            n_completions * len(r["prompt_ids"]) + sum(len(c) for c in r["completion_ids"]) for r in data.rows
        ) / (n_completions * len(data.rows))  # per sequence
    return {
        "seconds_per_step": statistics.median(measured),
        "steps": measured,
        "tokens_per_sequence": tokens,
        **_peak_memory(spec, loaded_kb),
    }


# ----- driver ----------------------------------------------------------------------------------------------

CHUNKED = {"chunked_loss": True}
PLAIN = {"chunked_loss": False}  # explicit: the chunked loss is the trainer's default where the model allows it
CONFIGS = {
    "sft": ("sft", PLAIN),
    "sft chunked": ("sft", CHUNKED),
    "sft grad ckpt": ("sft", {"gradient_checkpointing": True, **PLAIN}),  # the floor for the grad ckpt rows
    "pairwise_cringe": ("pairwise_cringe", PLAIN),
    "pairwise_cringe chunked": ("pairwise_cringe", CHUNKED),
    "pairwise_cringe chunked padding-free": ("pairwise_cringe", {"padding_free": True, **CHUNKED}),
    "pairwise_cringe chunked bf16": ("pairwise_cringe", {"bf16": True, **CHUNKED}),
    "pairwise_cringe chunked bf16 grad ckpt": (
        "pairwise_cringe",
        {"bf16": True, "gradient_checkpointing": True, **CHUNKED},
    ),
    "pairwise_cringe chunked bf16 grad ckpt chunk 256": (
        "pairwise_cringe",
        {"bf16": True, "gradient_checkpointing": True, "chunk_size": 256, **CHUNKED},
    ),
    # The optimiser step inside backward (cringe.optim_in_backward): no full set of gradients; no clipping.
    "pairwise_cringe chunked optim-in-bwd": (
        "pairwise_cringe",
        {"optimizer_in_backward": True, "max_grad_norm": 0, **CHUNKED},
    ),
    "pairwise_cringe chunked bf16 grad ckpt optim-in-bwd": (
        "pairwise_cringe",
        {"bf16": True, "gradient_checkpointing": True, "optimizer_in_backward": True, "max_grad_norm": 0, **CHUNKED},
    ),
    # Not AdamW: Adafactor's factored second moment and no first moment. A different optimiser (TRL's users can
    # pick it too), shown for what the optimiser state costs.
    "pairwise_cringe chunked bf16 grad ckpt optim-in-bwd adafactor": (
        "pairwise_cringe",
        {
            "bf16": True,
            "gradient_checkpointing": True,
            "optimizer_in_backward": True,
            "max_grad_norm": 0,
            "optim": "adafactor",
            **CHUNKED,
        },
    ),
    "dpo (ref copy)": ("dpo", PLAIN),
    "dpo (precomputed ref) chunked": ("dpo", {"precompute_ref_logps": True, **CHUNKED}),
    "trl dpo (ref copy)": ("trl", {}),
    "trl dpo (precompute_ref_log_probs)": ("trl_precompute", {}),
    "trl dpo (ref copy; fp32; no grad ckpt)": ("trl_matched", {}),
}


def run_config(model: str, name: str, loss: str, extra: dict, args) -> dict:
    spec = {
        "model": model,
        "loss": loss,
        "extra": extra,
        "pairs": args.pairs,
        "prompt_tokens": args.prompt_tokens,
        "completion_tokens": args.completion_tokens,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": args.threads,
        "device": args.device,
    }
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=args.config_timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.config_timeout} s"}
    if out.returncode != 0:
        # keep the whole traceback where the table is written
        (Path(args.results_dir) / f"error-{model}-{name.replace(' ', '_')}.txt").write_text(out.stderr)
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--configs", default="all", help="comma-separated names from: " + ", ".join(CONFIGS))
    parser.add_argument(
        "--baseline",
        default="sft",
        help="configuration the ratio columns divide by; 'none' runs "
        "only --configs (e.g. long sequences where the plain sft row would not fit in memory)",
    )
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tag", default="", help="suffix for the results file names (keeps other runs' files)")
    parser.add_argument(
        "--results-dir",
        default=str(RESULTS),
        help="where the table and raw numbers are written "
        "(after every configuration, so a run cut short keeps what it measured)",
    )
    parser.add_argument("--config-timeout", type=float, default=None, help="seconds one configuration may take")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: bf16 on the GPU; memory is torch.cuda.max_memory_allocated instead of RSS",
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    if args.device == "cuda":
        import torch

        machine = f"{torch.cuda.get_device_name()}, bf16, " + machine
    header = (
        f"pairs={args.pairs}, prompt={args.prompt_tokens}, completion={args.completion_tokens} tokens (+EOS), "
        f"median of {args.steps} steps after {args.warmup} warm-up, {'fp32' if args.device == 'cpu' else 'bf16'}, {machine}"
    )
    print(header, flush=True)
    report = {
        "settings": vars(args),
        "header": header,
        "machine": machine,
        "date": time.strftime("%Y-%m-%d"),
        "results": {},
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"train_step-{report['date']}{'-' + args.tag if args.tag else ''}"
    for model in args.models.split(","):
        results = report["results"].setdefault(model, {})
        names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
        if args.baseline not in names and args.baseline != "none":
            names.insert(0, args.baseline)  # the baseline every "x" column is taken against
        for name in names:
            loss, extra = CONFIGS[name]
            results[name] = run_config(model, name, loss, extra, args)
            print(f"  {model:8s} {name:24s} {results[name]}", flush=True)
            write_atomically(stem.with_suffix(".md"), render(report, args))
            write_atomically(stem.with_suffix(".json"), json.dumps(report, indent=2))
    print("\n" + render(report, args))


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# The ratios the issue asks for: each Pairwise Cringe row against our DPO and TRL's DPOTrainer.
OURS = (
    "pairwise_cringe",
    "pairwise_cringe chunked",
    "pairwise_cringe chunked bf16 grad ckpt",
    "pairwise_cringe chunked bf16 grad ckpt optim-in-bwd",
)
THEIRS = ("dpo (ref copy)", "trl dpo (ref copy)", "trl dpo (ref copy; fp32; no grad ckpt)")


def render(report: dict, args) -> str:
    lines = [f"# train_step benchmark ({report['date']})", "", report["header"], ""]
    mem = "peak RSS GB" if args.device == "cpu" else "peak GPU memory GiB"
    x = f"x {args.baseline}"
    for model, results in report["results"].items():
        base = results.get(args.baseline)
        if base is None or "error" in base:  # --baseline none (or it failed): no ratio columns
            base = {"seconds_per_step": float("nan"), "peak_rss_gb": float("nan"), "peak_above_loaded_gb": float("nan")}
        lines += [
            f"## {model}",
            "",
            f"| configuration | s/step | {x} | {mem} | {x} | peak above loaded policy GB | {x} |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in results.items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {name} | {r['seconds_per_step']:.3f} | {r['seconds_per_step'] / base['seconds_per_step']:.2f} "
                f"| {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / base['peak_rss_gb']:.2f} "
                f"| {r['peak_above_loaded_gb']:.2f} | {r['peak_above_loaded_gb'] / base['peak_above_loaded_gb']:.2f} |"
            )
        lines.append("")
        for name in OURS:
            for other in THEIRS:
                r, o = results.get(name, {}), results.get(other, {})
                if r and o and "error" not in r and "error" not in o:
                    lines.append(
                        f"- {name} / {other}: time {r['seconds_per_step'] / o['seconds_per_step']:.2f}x, "
                        f"peak memory {r['peak_rss_gb'] / o['peak_rss_gb']:.2f}x"
                    )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
