"""The demo's comparison over several seeds: each method's gold win rate against the start model, with an interval
that accounts for both seed-to-seed and prompt-to-prompt variation.

    python bench/research/seeds.py [--seeds 0 1 2] [--output-dir runs/seeds] [--preset default] [--existing 0=runs/demo]

Each seed is one `cringe demo --seed S` run (about 24 minutes each for the default preset on 2 CPU cores): the
seed changes the data splits (so the training and held-out prompts), both reward models' training, every sample
drawn, and the training order. `--existing S=DIR` counts an earlier `cringe demo --seed S --output_dir DIR` run
as seed S (it is resumed, so nothing is recomputed). Pooling: per-prompt win outcomes (and per-prompt gold
rewards) of every seed go through a two-stage bootstrap, seeds then prompts (cringe.evaluate.pooled_mean); KL is
the mean of the seeds' KL estimates, with the smallest and largest seed beside it. Writes seeds.md and seeds.json
into --output-dir and bench/results/seeds-<date>.md. Resumable: a finished seed is only re-read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_seed(seed: int, out: Path, preset: str, methods: str | None = None) -> dict:
    """`cringe demo` for one seed in its own process (its memory is returned between seeds); resumes."""
    resumed = (out / "results.json").exists()
    t0 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cringe",
            "demo",
            "--preset",
            preset,
            "--seed",
            str(seed),
            "--output_dir",
            str(out),
            *(["--methods", methods] if methods else []),
        ],
        check=True,
        cwd=ROOT,
    )
    meta = json.loads((out / "results.json").read_text())["meta"]
    return {
        "seed": seed,
        "dir": str(out),
        "seconds_this_call": round(time.time() - t0, 1),
        "resumed": resumed,
        "machine": meta["machine"],
    }


def method_outcomes(run_dir: Path, k: int) -> dict:
    """One method's round k on one seed: per-prompt gold win outcomes and gold rewards, its KL and proxy reward."""
    from cringe.evaluate import mean_by_prompt, win_outcomes
    from cringe.loop import rundir
    from cringe.loop.rundir import RunDir

    run = RunDir(run_dir)
    samples, gold = run.samples(run.file(k, rundir.EVAL_SAMPLES)), run.scores(run.file(k, rundir.EVAL_SCORES))
    base_samples, base_gold = run.samples(run.baseline_samples), run.scores(run.baseline_scores)
    per_prompt = mean_by_prompt(samples, gold)
    proxy_path = run.file(k, rundir.EVAL_PROXY_SCORES)  # written by the demo's report
    proxy = run.scores(proxy_path) if proxy_path.exists() else []
    return {
        "outcomes": win_outcomes(samples, gold, base_samples, base_gold),
        "gold": [per_prompt[i] for i in sorted(per_prompt)],
        "kl": run.evaluation(k)["kl"]["mean"],
        "proxy": sum(proxy) / len(proxy) if proxy else None,
    }


def pool(seed_dirs: dict[int, Path], methods: list[str], seed: int = 0) -> list[dict]:
    """One row per method and evaluated round, pooled over the seeds that have it."""
    from cringe.demo.pipeline import LABELS
    from cringe.evaluate import mean_by_prompt, pooled_mean
    from cringe.loop.rundir import RunDir

    rows = []
    first = next(iter(seed_dirs.values()))
    start_gold = {}  # per seed: the start model's held-out samples in m0/, which every method compares with
    for s, d in seed_dirs.items():
        m0 = RunDir(d / "m0")
        per_prompt = mean_by_prompt(m0.samples(m0.baseline_samples), m0.scores(m0.baseline_scores))
        start_gold[s] = [per_prompt[i] for i in sorted(per_prompt)]
    for name in methods:
        rounds = RunDir(first / "methods" / name).evaluated_rounds()
        for k in rounds:
            per_seed = {s: method_outcomes(d / "methods" / name, k) for s, d in seed_dirs.items()}
            kls = [r["kl"] for r in per_seed.values()]
            proxies = [r["proxy"] for r in per_seed.values() if r["proxy"] is not None]
            rows.append(
                {
                    "method": name,
                    "label": LABELS[name],
                    "round": k,
                    "final": k == rounds[-1],
                    "win_rate": pooled_mean([r["outcomes"] for r in per_seed.values()], seed=seed),
                    "gold_reward": pooled_mean([r["gold"] for r in per_seed.values()], seed=seed),
                    "kl": {"mean": sum(kls) / len(kls), "min": min(kls), "max": max(kls), "per_run": kls},
                    "proxy_reward": sum(proxies) / len(proxies) if proxies else None,
                    "seeds": sorted(per_seed),
                }
            )
    rows.insert(
        0,
        {
            "method": "sft",
            "label": LABELS["sft"],
            "round": 0,
            "final": True,
            "win_rate": None,
            "gold_reward": pooled_mean(list(start_gold.values()), seed=seed),
            "kl": {"mean": 0.0, "min": 0.0, "max": 0.0, "per_run": [0.0] * len(start_gold)},
            "proxy_reward": None,
            "seeds": sorted(start_gold),
        },
    )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| method | round | gold win rate vs start (pooled) | 95% CI (seeds and prompts) | per seed | "
        "gold reward | KL to start (mean; min..max over seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, g, kl = r["win_rate"], r["gold_reward"], r["kl"]
        win = "" if w is None else f"**{w['mean']:.3f}**" if r["final"] else f"{w['mean']:.3f}"
        ci = "" if w is None else f"{w['ci_low']:.3f}..{w['ci_high']:.3f}"
        per = "" if w is None else ", ".join(f"{v:.3f}" for v in w["per_run"])
        lines.append(
            f"| {r['label']} | {r['round']} | {win} | {ci} | {per} | {g['mean']:.3f} "
            f"({g['ci_low']:.3f}..{g['ci_high']:.3f}) | {kl['mean']:.1f} ({kl['min']:.1f}..{kl['max']:.1f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default="runs/seeds")
    parser.add_argument("--preset", default="default")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated demo methods (default: the preset's), e.g. adding the opt-in iterative_sft",
    )
    parser.add_argument(
        "--existing",
        action="append",
        default=[],
        metavar="SEED=DIR",
        help="an earlier `cringe demo --seed SEED --output_dir DIR` run to count as that seed",
    )
    args = parser.parse_args()

    from cringe.demo.pipeline import PRESETS, machine_description

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = {int(k): Path(v) for k, v in (e.split("=", 1) for e in args.existing)}
    seed_dirs = {s: existing.get(s, out / f"seed-{s}") for s in args.seeds}
    calls = []
    started = time.time()
    for s, d in seed_dirs.items():
        calls.append(run_seed(s, d, args.preset, args.methods))
        print(
            f"seed {s}: {calls[-1]['seconds_this_call']:.0f} s ({'resumed' if calls[-1]['resumed'] else 'cold'})",
            flush=True,
        )
    methods = args.methods.split(",") if args.methods else list(PRESETS[args.preset].methods)
    rows = pool(seed_dirs, methods)
    text = "\n".join(
        [
            f"# The demo's comparison over {len(seed_dirs)} seeds ({args.preset} preset)",
            "",
            f"`python bench/research/seeds.py {' '.join(sys.argv[1:])}` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
            f"{machine_description()}",
            "",
            "Each seed is a whole `cringe demo --seed S` (its own splits, reward models, samples and training order). "
            "Win rate: per held-out prompt, the method's mean gold reward against the start model's (win 1, tie 0.5), "
            f"{PRESETS[args.preset].eval_prompts} prompts per seed; the interval is a two-stage bootstrap over seeds "
            "and then prompts. Bold: the method's last round (the demo's row); other rows are earlier rounds of the "
            "iterative methods.",
            "",
            table(rows),
            "",
            "Wall time per seed in this call: "
            + "; ".join(
                f"seed {c['seed']}: {c['seconds_this_call'] / 60:.1f} min"
                + (" (resumed: an earlier run had done the work)" if c["resumed"] else " (cold)")
                for c in calls
            )
            + f". This call: {(time.time() - started) / 60:.1f} min.",
        ]
    )
    (out / "seeds.md").write_text(text + "\n")
    (out / "seeds.json").write_text(json.dumps({"rows": rows, "calls": calls}, indent=2))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"seeds-{time.strftime('%Y-%m-%d')}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
