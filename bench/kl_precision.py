"""Why the demo computes KL(policy || start) in fp32 although it samples in bf16: the estimate in both dtypes.

    python bench/kl_precision.py --run runs/demo/methods/pairwise_cringe [--round 1]

Reads the run's held-out samples (round-K/eval_samples.jsonl), scores them under the round's policy and under the
starting model in float32 and in bfloat16, and prints the Monte-Carlo KL from each, the seconds each pass took,
and how far bf16 sequence log-probs are from fp32 ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a cringe iterate / demo method directory")
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args()

    from cringe.loop import rundir
    from cringe.loop.stages import completion_logprobs
    from cringe.models import load_model, load_tokenizer

    run = rundir.RunDir(args.run)
    config = run.config()
    tokenizer = load_tokenizer(config["model"])
    samples = run.samples(run.file(args.round, rundir.EVAL_SAMPLES))
    logps, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        for who, path in (("policy", str(run.model(args.round))), ("start", config["model"])):
            model = load_model(path, tokenizer, dtype)
            t0 = time.time()
            logps[dtype, who] = completion_logprobs(model, samples, tokenizer.pad_token_id)
            seconds[dtype, who] = time.time() - t0
    print(f"{len(samples)} samples from {run.round(args.round)}")
    for dtype in ("float32", "bfloat16"):
        kl = [p - s for p, s in zip(logps[dtype, "policy"], logps[dtype, "start"])]
        print(
            f"{dtype}: KL {sum(kl) / len(kl):.3f} nats, passes {seconds[dtype, 'policy']:.1f} s + "
            f"{seconds[dtype, 'start']:.1f} s"
        )
    diff = [a - b for a, b in zip(logps["float32", "start"], logps["bfloat16", "start"])]
    print(
        f"start model, sequence log-prob fp32 - bf16: mean {sum(diff) / len(diff):.3f}, "
        f"max |.| {max(abs(d) for d in diff):.3f} nats"
    )


if __name__ == "__main__":
    main()
