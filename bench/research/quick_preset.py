"""Choose the quick preset's training budget by measurement: variants of `cringe demo --quick` run side by side.

    python bench/research/quick_preset.py [--output-dir runs/quick-variants] [--variants a,b] [--methods iterative_pairwise_cringe]

Each variant changes a few preset fields (VARIANTS) and runs the chosen methods on the quick preset's data, reward
models and seed (both reward models come from the cache after the first variant, so variants are timed without
set-up). Prints each variant's gold win rate with its 95% interval, KL and the wall seconds of its methods.
The preset's aim: the Iterative Pairwise Cringe row's interval above 0.5, the whole `cringe demo --quick` at most
5 minutes from an empty cache on 2 CPU cores. Reused reward models mean this measures neither the cold time nor the
proxy's accuracy spread: bench/research/quick_cold.py runs the real command from an empty cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

VARIANTS = {
    "current": {},
    "lr3e-4": {"learning_rate": 3e-4},
    "lr3e-4+eval48": {"learning_rate": 3e-4, "eval_prompts": 48},
    "lr3e-4+prompts16+eval48": {"learning_rate": 3e-4, "round_prompts": 16, "eval_prompts": 48},
    "lr3e-4+prompts24+eval48": {"learning_rate": 3e-4, "round_prompts": 24, "eval_prompts": 48},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/quick-variants")
    parser.add_argument("--variants", help=f"comma-separated subset of {list(VARIANTS)}")
    parser.add_argument("--methods", default="iterative_pairwise_cringe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the demo's seed (splits, samples, training)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from cringe.demo.pipeline import PRESETS, Demo, machine_description
    from cringe.evaluate import format_table
    from cringe.loop.rundir import RunDir

    methods = tuple(m.strip() for m in args.methods.split(","))
    chosen = list(VARIANTS) if not args.variants else [v.strip() for v in args.variants.split(",")]
    rows = []
    for name, seed in ((n, s) for n in chosen for s in args.seeds):
        preset = dataclasses.replace(PRESETS["quick"], methods=methods, **VARIANTS[name])
        out = Path(args.output_dir) / f"{name.replace('+', '_')}-seed{seed}"
        demo = Demo(preset, str(out), seed=seed)
        demo.plan()
        demo.assets()
        t0 = time.time()
        m0 = demo.m0()
        demo.run_methods(m0)
        seconds = time.time() - t0
        for method in methods:
            run = RunDir(out / "methods" / method)
            e = run.evaluation(run.evaluated_rounds()[-1])
            w = e["win_rate"]
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "method": method,
                    "win": w["win_rate"],
                    "ci": f"{w['ci_low']:.3f}..{w['ci_high']:.3f}",
                    "n": w["n"],
                    "kl": e["kl"]["mean"],
                    "seconds": round(seconds),
                }
            )
        print(rows[-1], flush=True)
    table = format_table(
        rows,
        [
            ("variant", "variant"),
            ("seed", "seed"),
            ("method", "method"),
            ("gold win rate vs start", "win"),
            ("95% CI", "ci"),
            ("n", "n"),
            ("KL", "kl"),
            ("s (M0 samples + methods, set-up excluded)", "seconds"),
        ],
    )
    print(
        f"\n`python bench/research/quick_preset.py {' '.join(sys.argv[1:])}` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
        f"{machine_description()}\n\n{table}"
    )


if __name__ == "__main__":
    main()
