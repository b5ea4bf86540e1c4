"""The reward-KL frontier on the demo's testbed: each method's strength swept, gold reward against KL to the start.

    python bench/frontier.py [--demo-dir runs/demo] [--output-dir runs/frontier] [--points name,name]

One method ending at one KL cannot be ranked against another ending elsewhere: a method that moves further from
the start buys more reward with it. This sweeps each method's own strength on the default demo's set-up (the
demo's seed, M0 samples, proxy labeller, gold examiner and held-out prompts), so the methods can be compared at
matched KL:
    DPO                 beta (0.1 is the demo's)
    Binary Cringe       alpha (1.0 is the demo's)
    Pairwise Cringe     alpha with margin 1, margin with alpha 0.2 (alpha 0.2, margin 1 is the demo's), and
                        3 epochs instead of 1 (alpha and margin barely move one round's KL)
    Iterative DPO / Iterative Pairwise Cringe   by round (the demo evaluates every round)
The demo's own runs in --demo-dir are the default-strength points (run `cringe demo --output_dir DIR` first, or
let this script do it: it resumes the demo there). Each new point is one round of training on the same M0
samples plus a held-out evaluation: about 2-3 minutes on 2 CPU cores. Resumable.

Writes frontier.md, frontier.json and frontier.png into --output-dir (copies in bench/results/): (a) gold reward
against KL, 95% intervals on both, one curve per method from the start model; (b) proxy reward against gold
reward for every point, which bends over if optimising the proxy stops paying in gold (over-optimisation); and a
table of each method's gold reward interpolated at shared KL values. Intervals are over held-out prompts of one
seed (bench/seeds.py measures the seed-to-seed spread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from cringe import rundir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# point name -> (demo method it varies, training overrides, label on the plot)
POINTS = {
    "dpo-beta-0.03": ("dpo", {"beta": 0.03}, "β 0.03"),
    "dpo-beta-0.3": ("dpo", {"beta": 0.3}, "β 0.3"),
    "dpo-beta-1": ("dpo", {"beta": 1.0}, "β 1"),
    "binary-alpha-0.3": ("binary_cringe", {"alpha": 0.3}, "α 0.3"),
    "binary-alpha-3": ("binary_cringe", {"alpha": 3.0}, "α 3"),
    "pc-alpha-0.05": ("pairwise_cringe", {"alpha": 0.05}, "α 0.05"),
    "pc-alpha-1": ("pairwise_cringe", {"alpha": 1.0}, "α 1"),
    "pc-margin-0": ("pairwise_cringe", {"margin": 0.0}, "b 0"),
    "pc-margin-10": ("pairwise_cringe", {"margin": 10.0}, "b 10"),
    # alpha and margin leave one round near KL 3-5; more training is the lever left
    "pc-epochs-3": ("pairwise_cringe", {"num_train_epochs": 3.0}, "3 epochs"),
}
# how a Pairwise Cringe family is drawn: (line style, marker)
PC_STYLES = {"alpha": ("-", "o"), "margin": ("--", "^"), "num_train_epochs": (":", "s")}
# the demo's own settings, as labelled on the plot
DEFAULT_LABELS = {"dpo": "β 0.1", "binary_cringe": "α 1", "pairwise_cringe": "α 0.2, b 1"}


def point_row(demo, run_dir: Path, k: int, method: str, setting: str, family: str) -> dict:
    """One evaluated policy: the loop's comparison (gold-scored), its proxy reward, and where it came from."""
    from cringe.evaluate import mean_with_ci
    from cringe.rundir import RunDir

    run = RunDir(run_dir)
    comparison = run.evaluation(k)
    proxy = demo.proxy_scores(run.file(k, rundir.EVAL_SAMPLES), run.file(k, rundir.EVAL_PROXY_SCORES))
    return {"family": family, "method": method, "setting": setting, "round": k, "dir": str(run_dir),
            "kl": comparison["kl"], "gold_reward": comparison["reward"], "win_rate": comparison["win_rate"],
            "proxy_reward": mean_with_ci(proxy, seed=demo.seed), "length": comparison["text"]["length_tokens"],
            "train_seconds": run.seconds(rundir.MODEL, k)}


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of y at x along points sorted by x; None outside their range (no extrapolation)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def family_curve(rows: list[dict], start: dict, family: str) -> list[tuple[float, float]]:
    """(KL, gold reward) of a family's points sorted by KL, starting at the start model (0, its reward)."""
    pts = sorted((r["kl"]["mean"], r["gold_reward"]["mean"]) for r in rows if r["family"] == family)
    return [(0.0, start["mean"])] + pts


def plot(rows: list[dict], start: dict, start_proxy: dict, families: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cringe.report import _colour, _interval, _save

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    ax.errorbar([0.0], [start["mean"]], yerr=_interval([start]), marker="s", color=_colour("sft"), capsize=3,
                linestyle="none", label="start model (SFT)")
    bx.errorbar([start_proxy["mean"]], [start["mean"]], xerr=_interval([start_proxy]), yerr=_interval([start]),
                marker="s", color=_colour("sft"), capsize=3, linestyle="none", label="start model (SFT)")
    for family, label in families.items():
        pts = sorted((r for r in rows if r["family"] == family), key=lambda r: r["kl"]["mean"])
        if not pts:
            continue
        colour = _colour(pts[0]["method"])
        xs, ys = [0.0] + [r["kl"]["mean"] for r in pts], [start["mean"]] + [r["gold_reward"]["mean"] for r in pts]
        line, marker = PC_STYLES.get(family.partition("/")[2], ("-", "o"))
        ax.plot(xs, ys, color=colour, alpha=0.5, linestyle=line)
        ax.errorbar(xs[1:], ys[1:], yerr=_interval([r["gold_reward"] for r in pts]),
                    xerr=_interval([r["kl"] for r in pts]), marker=marker, capsize=2, color=colour,
                    linestyle="none", label=label)
        for r in pts:
            ax.annotate(r["setting"], (r["kl"]["mean"], r["gold_reward"]["mean"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=colour)
        bx.errorbar([r["proxy_reward"]["mean"] for r in pts], [r["gold_reward"]["mean"] for r in pts],
                    xerr=_interval([r["proxy_reward"] for r in pts]), yerr=_interval([r["gold_reward"] for r in pts]),
                    marker="o", capsize=2, color=colour, linestyle="none", label=label, alpha=0.85)
    n = start["n"]
    ax.set_xlabel("KL(policy || start), nats per completion (95% CI)")
    ax.set_ylabel(f"gold reward P(positive), n = {n} (95% CI)")
    ax.set_title("(a) gold reward against KL", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    bx.set_xlabel("proxy reward (the labeller's logit), mean (95% CI)")
    bx.set_ylabel("gold reward (95% CI)")
    bx.set_title("(b) proxy against gold: over-optimisation would bend this over", fontsize=10)
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--output-dir", default="runs/frontier")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (the demo directory's)")
    parser.add_argument("--points", help=f"comma-separated subset of {list(POINTS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cringe").setLevel(logging.INFO)

    from cringe.demo import LABELS, PRESETS, Demo, machine_description
    from cringe.loop import IterativeRun
    from cringe.rundir import RunDir

    started = time.time()
    preset = PRESETS[args.preset]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(preset, args.demo_dir, seed=args.seed)
    demo.plan()
    demo.assets()
    m0 = demo.m0()
    demo.run_methods(m0)  # the default-strength points (resumed: nothing is redone when the demo has finished)

    chosen = list(POINTS) if not args.points else [p.strip() for p in args.points.split(",")]
    unknown = [p for p in chosen if p not in POINTS]
    if unknown:
        sys.exit(f"unknown points {unknown}; choose from {list(POINTS)}")
    seconds = {}
    for name in chosen:
        method, overrides, _ = POINTS[name]
        config = demo.method_config(method)
        config = dataclasses.replace(config, output_dir=str(out / "points" / name),
                                     train={**config.train, **overrides})
        run = IterativeRun(config)
        t0 = time.time()
        logging.info("frontier point %s: %s %s", name, method, overrides)
        finished_before = run.run_dir.evaluation(1) is not None
        run.run()
        if not finished_before:
            seconds[name] = round(time.time() - t0, 1)

    families = {"dpo": "DPO (β)", "binary_cringe": "Binary Cringe (α)", "pairwise_cringe/alpha": "Pairwise Cringe (α)",
                "pairwise_cringe/margin": "Pairwise Cringe (margin b)",
                "pairwise_cringe/num_train_epochs": "Pairwise Cringe (epochs)", "iterative_dpo": LABELS["iterative_dpo"] + " (round)",
                "iterative_pairwise_cringe": LABELS["iterative_pairwise_cringe"] + " (round)"}
    rows = []
    demo_dir = Path(args.demo_dir)
    for method in ("dpo", "binary_cringe", "pairwise_cringe"):
        run_dir = demo_dir / "methods" / method
        k = RunDir(run_dir).evaluated_rounds()[-1]
        for family in ([method] if method != "pairwise_cringe" else [f"pairwise_cringe/{lever}" for lever in PC_STYLES]):
            rows.append(point_row(demo, run_dir, k, method, DEFAULT_LABELS[method] + " (demo)", family))
    for method in ("iterative_dpo", "iterative_pairwise_cringe"):
        run_dir = demo_dir / "methods" / method
        for k in RunDir(run_dir).evaluated_rounds():
            rows.append(point_row(demo, run_dir, k, method, f"round {k}", method))
    for name in chosen:
        method, overrides, label = POINTS[name]
        family = method if method != "pairwise_cringe" else f"pairwise_cringe/{next(iter(overrides))}"
        rows.append(point_row(demo, out / "points" / name, 1, method, label, family))

    from cringe.evaluate import mean_with_ci

    base = RunDir(demo_dir / "m0")
    start = mean_with_ci(base.scores(base.baseline_scores), seed=demo.seed)
    start_proxy = mean_with_ci(demo.proxy_scores(base.baseline_samples, base.path / rundir.BASELINE_PROXY_SCORES),
                               seed=demo.seed)
    plot(rows, start, start_proxy, families, out / "frontier.png")

    # gold reward at shared KL values, by linear interpolation along each family's curve (from the start model)
    curves = {f: family_curve(rows, start, f) for f in families}
    top = max(r["kl"]["mean"] for r in rows)
    grid = [kl for kl in (2.5, 5, 7.5, 10, 15, 20, 30, 40) if kl <= top]
    matched = ["| method (what varies) | " + " | ".join(f"KL {kl:g}" for kl in grid) + " |",
               "|---|" + "---|" * len(grid)]
    for f, label in families.items():
        cells = [interpolate(curves[f], kl) for kl in grid]
        matched.append(f"| {label} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    if not grid:
        matched = [f"(every point ended below KL 2.5: nothing to interpolate; largest KL {top:.2f})"]
    lines = ["| method | setting | KL to start (95% CI) | gold reward (95% CI) | gold win rate vs start (95% CI) | "
             "proxy reward | length | train s |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (list(families).index(r["family"]), r["kl"]["mean"])):
        kl, g, w = r["kl"], r["gold_reward"], r["win_rate"]
        lines.append(f"| {families[r['family']]} | {r['setting']} | {kl['mean']:.1f} ({kl['ci_low']:.1f}..{kl['ci_high']:.1f}) "
                     f"| {g['mean']:.3f} ({g['ci_low']:.3f}..{g['ci_high']:.3f}) | {w['win_rate']:.3f} "
                     f"({w['ci_low']:.3f}..{w['ci_high']:.3f}) | {r['proxy_reward']['mean']:.2f} | "
                     f"{r['length']:.1f} | {r['train_seconds'] or 0:.0f} |")
    text = "\n".join([
        f"# The reward-KL frontier on the demo's testbed ({args.preset} preset, seed {demo.seed})", "",
        f"`python bench/frontier.py {' '.join(sys.argv[1:])}` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
        f"{machine_description()} · this call {(time.time() - started) / 60:.1f} min "
        f"({len(seconds)} points trained and evaluated in this call, the rest resumed: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")", "",
        f"Start model: gold reward {start['mean']:.3f} ({start['ci_low']:.3f}..{start['ci_high']:.3f}), proxy "
        f"{start_proxy['mean']:.2f}. Every point: one round on the demo's M0 samples (iterative methods: their "
        f"rounds), evaluated on the same {start['n']} held-out prompts, one sample each.", "",
        *lines, "", "## Gold reward at matched KL", "",
        "Linear interpolation along each method's curve from the start model (KL 0); blank: outside the KL range "
        "the method reached (no extrapolation).", "", *matched, "", "![frontier](frontier.png)",
    ])
    (out / "frontier.md").write_text(text + "\n")
    (out / "frontier.json").write_text(json.dumps({"start": start, "start_proxy": start_proxy, "rows": rows,
                                                   "seconds": seconds}, indent=2))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    (results / f"frontier-{stamp}.md").write_text(text.replace("](frontier.png)", f"](frontier-{stamp}.png)") + "\n")
    shutil.copyfile(out / "frontier.png", results / f"frontier-{stamp}.png")
    print(text)


if __name__ == "__main__":
    main()
