"""The transformers sampler with each prompt's prefill shared by its n samples, against generate's n-fold prefill.

    python bench/prompt_cache.py [--prompts 12,32] [--n 4] [--new-tokens 16,32] [--repeats 3] [--preset quick]

`generate(num_return_sequences=n)` repeats every prompt n times before its forward pass; `TransformersSampler`
now runs each prompt's prefill once and repeats its KV cache (`cringe.generation._shared_prompt_cache`). This
samples the demo's own training prompts (the sentiment testbed, seed 0, its system prompt and review openings) with
the demo's policy, both ways, alternating within each repeat so that both see the machine in the same state, and
prints the median seconds of each, their ratio, and how many of the samples came out token for token the same
(they differ only where float rounding between the two prefill shapes tips a sampled token).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default="12,32", help="prompts per call (the quick and default presets' rounds)")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--new-tokens", default="16,32", help="max new tokens (the quick and default presets')")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="quick", help="the demo preset whose policy, dtype and batch size to use")
    args = parser.parse_args()

    from cringe.data import load_prompts
    from cringe.demo.pipeline import PRESETS, machine_description
    from cringe.generation import SamplingConfig, TransformersSampler
    from cringe.models import default_dtype, load_model, load_tokenizer
    from cringe.testbeds import sentiment

    preset = PRESETS[args.preset]
    tokenizer = load_tokenizer(preset.policy)
    dtype = default_dtype(preset.resolved_sampling_dtype(), "cpu")  # as the loop samples on a CPU
    model = load_model(preset.policy, tokenizer, dtype)
    splits = sentiment.make_splits(0, preset.sizes)
    with tempfile.TemporaryDirectory() as tmp:
        path = sentiment.write_prompt_file(splits["train_prompts"], Path(tmp) / "prompts.jsonl")
        prompts = [p.ids for p in load_prompts(str(path), tokenizer)]
    samplers = {share: TransformersSampler(model, tokenizer, share_prompt_cache=share) for share in (False, True)}
    rows = []
    for count in (int(c) for c in args.prompts.split(",")):
        for new_tokens in (int(t) for t in args.new_tokens.split(",")):
            config = SamplingConfig(n=args.n, max_new_tokens=new_tokens, batch_size=preset.sampling_batch, seed=0)
            chunk = prompts[:count]
            samplers[True].sample(chunk[:2], config, progress=False)  # warm-up
            seconds = {False: [], True: []}
            outputs = {}
            for _ in range(args.repeats):
                for share in (False, True):
                    t0 = time.perf_counter()
                    outputs[share] = samplers[share].sample(chunk, config, progress=False)
                    seconds[share].append(time.perf_counter() - t0)
            same = sum(a.completion_ids == b.completion_ids for a, b in zip(outputs[False], outputs[True]))
            row = {
                "prompts": count,
                "new_tokens": new_tokens,
                "prompt_tokens": sum(len(p) for p in chunk) / count,
                "repeated": statistics.median(seconds[False]),
                "shared": statistics.median(seconds[True]),
                "same": f"{same}/{len(outputs[True])}",
            }
            rows.append(row)
            print(row, flush=True)
    lines = [
        f"`python bench/prompt_cache.py {' '.join(sys.argv[1:])}` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
        f"{machine_description()}",
        "",
        f"{preset.policy}, {dtype}, n = {args.n}, "
        f"sampling batch {preset.sampling_batch} sequences, median of {args.repeats} alternating repeats.",
        "",
        "| prompts | prompt tokens (mean) | max new tokens | prefill repeated n times: s | prefill once: s | "
        "ratio | samples identical |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['prompts']} | {r['prompt_tokens']:.0f} | {r['new_tokens']} | {r['repeated']:.2f} | "
        f"{r['shared']:.2f} | {r['shared'] / r['repeated']:.2f}x | {r['same']} |"
        for r in rows
    ]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
