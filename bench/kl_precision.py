"""Why the demo computes KL(policy || start) in fp32 although it samples in bf16: the estimate in both dtypes.

    python bench/kl_precision.py --run runs/demo/methods/pairwise_cringe [--round 1]

Reads the run's held-out samples (round-K/eval_samples.jsonl), scores them under the round's policy and under the
starting model in float32 and in bfloat16, and prints the Monte-Carlo KL from each, the seconds each pass took,
and how far bf16 sequence log-probs are from fp32 ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a cringe iterate / demo method directory")
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args()

    from cringe.evaluate import sequence_logprobs
    from cringe.loop import read_jsonl
    from cringe.models import load_model, load_tokenizer

    run = Path(args.run)
    config = json.loads((run / "state.json").read_text())["config"]
    tokenizer = load_tokenizer(config["model"])
    rows = [{"prompt_ids": s["prompt_ids"], "completion_ids": [s["completion_ids"]]}
            for s in read_jsonl(run / f"round-{args.round}" / "eval_samples.jsonl")]
    logps, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        for who, path in (("policy", str(run / f"round-{args.round}" / "model")), ("start", config["model"])):
            model = load_model(path, tokenizer, dtype)
            t0 = time.time()
            logps[dtype, who] = sequence_logprobs(model, rows, tokenizer.pad_token_id)
            seconds[dtype, who] = time.time() - t0
    print(f"{len(rows)} samples from {run}/round-{args.round}")
    for dtype in ("float32", "bfloat16"):
        kl = [p - s for p, s in zip(logps[dtype, "policy"], logps[dtype, "start"])]
        print(f"{dtype}: KL {sum(kl) / len(kl):.3f} nats, passes {seconds[dtype, 'policy']:.1f} s + "
              f"{seconds[dtype, 'start']:.1f} s")
    diff = [a - b for a, b in zip(logps["float32", "start"], logps["bfloat16", "start"])]
    print(f"start model, sequence log-prob fp32 - bf16: mean {sum(diff) / len(diff):.3f}, "
          f"max |.| {max(abs(d) for d in diff):.3f} nats")


if __name__ == "__main__":
    main()
