"""The evaluation's log-prob pass, with and without the LM head restricted to completion positions.

    python bench/kl_pass.py --run runs/demo/methods/iterative_pairwise_cringe [--round 1] [--repeats 2]

Every evaluation scores the policy's held-out samples under the policy and under the start model (the KL
estimate). `cringe.evaluate.sequence_logprobs` now sends only completion positions through the LM head, a chunk
of tokens at a time (`cringe.chunked`); before, the plain forward formed [batch, tokens, vocabulary] logits and
their log-softmax, prompt positions included. This times both paths on the run's own samples and model,
alternating (so they share the machine's state), and prints seconds per pass, the ratio, and the largest
difference between their sequence log-probs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a cringe iterate / demo method directory")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from unittest import mock

    from cringe import chunked
    from cringe.demo.pipeline import machine_description
    from cringe.loop import rundir
    from cringe.loop.stages import completion_logprobs
    from cringe.models import load_model, load_tokenizer

    run = rundir.RunDir(args.run)
    tokenizer = load_tokenizer(run.config()["model"])
    samples = run.samples(run.file(args.round, rundir.EVAL_SAMPLES))
    model = load_model(str(run.model(args.round)), tokenizer, "float32")
    seconds: dict[str, list[float]] = {"full logits": [], "completion positions only": []}
    logps = {}
    for _ in range(args.repeats):
        for path in seconds:
            forced = "the plain path, for comparison" if path == "full logits" else None
            with mock.patch.object(chunked, "chunked_unsupported_reason", lambda m, r=forced: r):
                t0 = time.perf_counter()
                logps[path] = completion_logprobs(model, samples, tokenizer.pad_token_id)
                seconds[path].append(time.perf_counter() - t0)
    full, fused = (statistics.median(v) for v in seconds.values())
    diff = max(abs(a - b) for a, b in zip(*logps.values()))
    prompt = statistics.mean(len(s.prompt_ids) for s in samples)
    completion = statistics.mean(s.num_tokens for s in samples)
    print(
        f"`python bench/kl_pass.py {' '.join(sys.argv[1:])}` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
        f"{machine_description()}\n"
    )
    print(
        f"{len(samples)} samples of {run.round(args.round)} (prompt {prompt:.0f} tokens, completion "
        f"{completion:.0f} on average), fp32, batch 32, median of {args.repeats} passes each, alternating\n"
    )
    print("| path | s per pass | ratio to full logits |\n|---|---|---|")
    print(f"| full logits (before) | {full:.1f} | 1.00 |")
    print(f"| completion positions only (now) | {fused:.1f} | {fused / full:.2f} |")
    print(f"\nlargest difference between the two paths' sequence log-probs: {diff:.2e} nats")


if __name__ == "__main__":
    main()
