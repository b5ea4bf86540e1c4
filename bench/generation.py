"""New tokens per second of the transformers sampling backend at batch sizes 1..64 (sequences per generate call).

    python bench/generation.py [--model smollm2] [--dtype bfloat16] [--new-tokens 48] [--batches 1,2,4,8,16,32,64]

Each batch size samples the same prompts (opening words of a movie-review-like instruction) with temperature 1,
top_p 1, top_k off, and counts generated tokens up to EOS. One warm-up call per batch size is not timed. The
default `SamplingConfig.batch_size` is chosen from this table: the smallest batch within 10% of the best rate
(bigger batches pad more and hold more KV cache for little gain).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 | tiny | a model path")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch

    from cringe.generation import SamplingConfig, TransformersSampler
    from cringe.models import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    spec = {"smollm2": "smollm2-135m-instruct", "tiny": "tiny-random-llama"}.get(args.model, args.model)
    model, tokenizer = load_model_and_tokenizer(spec, dtype=args.dtype)
    openings = [
        "This movie was",
        "I went to see this film",
        "The acting in this",
        "From the first scene",
        "My friends told me",
        "What a",
        "The director of this",
        "I rented this",
    ]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Continue this movie review: {o}"}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
        for o in openings
    ]
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        n = min(batch, 8)  # samples per prompt; prompts fill the rest of the batch
        chunk = [prompts[i % len(prompts)] for i in range(max(1, batch // n))]
        config = SamplingConfig(n=n, max_new_tokens=args.new_tokens, batch_size=batch, seed=0)
        sampler = TransformersSampler(model, tokenizer)
        sampler.sample(chunk, config, progress=False)  # warm-up
        t0 = time.perf_counter()
        samples = sampler.sample(chunk, config, progress=False)
        seconds = time.perf_counter() - t0
        tokens = sum(s.num_tokens for s in samples)
        rows.append({"batch": len(samples), "new_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
        print(
            f"batch {len(samples):3d}: {tokens:5d} new tokens in {seconds:6.2f}s = {tokens / seconds:7.1f} tok/s",
            flush=True,
        )
    best = max(r["tokens_per_s"] for r in rows)
    chosen = min(r["batch"] for r in rows if r["tokens_per_s"] >= 0.9 * best)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    lines = [
        f"# generation benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"{spec}, {args.dtype}, {args.new_tokens} new tokens max, {machine}",
        "",
        "| sequences per call | new tokens | seconds | new tokens/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['batch']} | {r['new_tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} |" for r in rows]
    lines += ["", f"smallest batch within 10% of the best rate: {chosen}"]
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"generation-{time.strftime('%Y-%m-%d')}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"settings": vars(args), "rows": rows, "chosen": chosen}, indent=2))


if __name__ == "__main__":
    main()
