"""The reward-KL frontier on the demo's testbed: methods, baselines and ablations, gold reward against KL.

    python bench/research/frontier.py [--demo-dir runs/demo] [--output-dir runs/frontier] [--points name,group,...]
                             [--methods m,m] [--best-of-n 16]

One method ending at one KL cannot be ranked against another ending elsewhere: a method that moves further from
the start buys more reward with it. This draws every method from the start model (KL 0) on the demo's set-up (the
demo's seed, M0 samples, proxy labeller, gold examiner and held-out prompts), so methods compare at matched KL.
Point groups (--points takes point or group names; default: every point):
    one-round   one round on the M0 samples with each method's strength swept: DPO beta, binary Cringe alpha,
                Pairwise Cringe alpha, margin and epochs
    ablations   Iterative Pairwise Cringe, 3 rounds, one change each: alpha 0 (its cross-entropy half alone), the
                gate held open (every loser token pushed down), the gate on per-token means, k = 5
    rounds      Iterative DPO and Iterative Pairwise Cringe continued from the demo's 3 rounds to 6 (prompts wrap
                around: rounds 4-6 revisit rounds 1-3's prompts, with fresh samples from the newer model)
    lr          the iterative methods at lr 3e-5 (evaluated after round 3 only) and 3e-4 (the demo's 1e-4 is
                the third setting)
Baselines drawn without training: best-of-n from the start model (n = 1..--best-of-n on each held-out prompt, the
sample the proxy labeller ranks first, scored by the gold examiner; KL in closed form, log n - (n-1)/n, an upper
bound on the true KL), and the demo's iterative methods by round, Iterative SFT on the best sample among them
(run `cringe demo --methods ...,iterative_sft`, or let this script do it: it resumes the demo in --demo-dir).
Every point is resumable: rerunning the command redoes nothing finished.

Writes frontier.md, frontier.json and frontier.png into --output-dir (dated copies in --results-dir): (a) methods and
baselines, (b) Pairwise Cringe's ablations, (c) learning rates: gold reward against KL, 95% intervals on both;
(d) proxy reward against gold reward for every point, which bends over if optimising the proxy stops paying in
gold (over-optimisation); a table of each curve's gold reward interpolated at shared KL values, and the learning
rate table with each method's best setting. Intervals are over held-out prompts of one seed (bench/research/seeds.py
measures the seed-to-seed spread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cringe.loop import rundir

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Point:
    """One trained variant of a demo method, drawn on the frontier as part of `family`."""

    method: str  # the demo method it varies
    group: str
    family: str  # the curve it belongs to
    label: str  # beside the point on the plot
    train: dict = field(default_factory=dict)  # training overrides
    rounds: int | None = None  # None: the method's own
    eval_last_only: bool = False  # evaluate the last round only (a point, not a curve; saves an evaluation a round)
    extends_demo: bool = False  # continue a copy of the demo's own run (more rounds) instead of starting afresh


def lr_name(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 3e-4, as people write it


IPC, IDPO, ISFT = "iterative_pairwise_cringe", "iterative_dpo", "iterative_sft"
LR_SWEEP = (3e-5, 3e-4)
POINTS = {
    "dpo-beta-0.03": Point("dpo", "one-round", "dpo", "β 0.03", {"beta": 0.03}),
    "dpo-beta-0.3": Point("dpo", "one-round", "dpo", "β 0.3", {"beta": 0.3}),
    "dpo-beta-1": Point("dpo", "one-round", "dpo", "β 1", {"beta": 1.0}),
    "binary-alpha-0.3": Point("binary_cringe", "one-round", "binary_cringe", "α 0.3", {"alpha": 0.3}),
    "binary-alpha-3": Point("binary_cringe", "one-round", "binary_cringe", "α 3", {"alpha": 3.0}),
    "pc-alpha-0.05": Point("pairwise_cringe", "one-round", "pairwise_cringe/alpha", "α 0.05", {"alpha": 0.05}),
    "pc-alpha-1": Point("pairwise_cringe", "one-round", "pairwise_cringe/alpha", "α 1", {"alpha": 1.0}),
    "pc-margin-0": Point("pairwise_cringe", "one-round", "pairwise_cringe/margin", "b 0", {"margin": 0.0}),
    "pc-margin-10": Point("pairwise_cringe", "one-round", "pairwise_cringe/margin", "b 10", {"margin": 10.0}),
    # alpha and margin leave one round near KL 3-5; more training is the lever left
    "pc-epochs-3": Point(
        "pairwise_cringe", "one-round", "pairwise_cringe/epochs", "3 epochs", {"num_train_epochs": 3.0}
    ),
    # Each ablation is Iterative Pairwise Cringe with one thing changed, evaluated after its last round.
    # alpha 0: cross-entropy on the winner alone, with the pairs, normaliser (winner + loser tokens) and step
    # size of Pairwise Cringe; Iterative SFT on the best sample differs from it in those (every prompt's best
    # sample, normalised by its own tokens).
    "ipc-alpha-0": Point(IPC, "ablations", "ablation/alpha-0", "α 0", {"alpha": 0.0}, eval_last_only=True),
    # sigmoid((1e6 - delta) / tau) is 1 for any delta a policy reaches: binary Cringe on every loser token
    "ipc-gate-open": Point(IPC, "ablations", "ablation/gate-open", "gate open", {"margin": 1e6}, eval_last_only=True),
    "ipc-margin-mean": Point(
        IPC, "ablations", "ablation/margin-mean", "margin on means", {"margin_on": "mean"}, eval_last_only=True
    ),
    "ipc-k-5": Point(IPC, "ablations", "ablation/k-5", "k 5", {"k": 5}, eval_last_only=True),
    "ipc-6-rounds": Point(IPC, "rounds", IPC, "", rounds=6, extends_demo=True),
    "idpo-6-rounds": Point(IDPO, "rounds", IDPO, "", rounds=6, extends_demo=True),
    # The lower rate is evaluated after its last round only: on 2 CPU cores an evaluation costs about as much as
    # a round's sampling and training together. Should it be a method's best, its frontier is that one point.
    **{
        f"{short}-lr-{lr_name(lr)}": Point(
            method, "lr", f"lr/{method}/{lr_name(lr)}", "", {"learning_rate": lr}, eval_last_only=lr < 1e-4
        )
        for method, short in ((IPC, "ipc"), (IDPO, "idpo"), (ISFT, "isft"))
        for lr in LR_SWEEP
    },
}
GROUPS = {p.group for p in POINTS.values()}
ONE_ROUND = ("dpo", "binary_cringe", "pairwise_cringe")
ITERATIVE = (IDPO, IPC, ISFT)
DEFAULT_LABELS = {"dpo": "β 0.1", "binary_cringe": "α 1", "pairwise_cringe": "α 0.2, b 1"}
# how a family is drawn: (panel, line style, marker); panels: a methods and baselines, b ablations, c learning rates
STYLES = {
    "best_of_n": ("a", "-.", "D"),
    "pairwise_cringe/margin": ("a", "--", "^"),
    "pairwise_cringe/epochs": ("a", ":", "s"),
    "ablation/alpha-0": ("b", "none", "v"),
    "ablation/gate-open": ("b", "none", "P"),
    "ablation/margin-mean": ("b", "none", "X"),
    "ablation/k-5": ("b", "none", "*"),
}
BEST_OF_N_COLOUR = "#000000"


def family_label(family: str, labels: dict) -> str:
    if family == "best_of_n":
        return "best-of-n from the start (n; proxy picks)"
    if family.startswith("lr/"):
        _, method, lr = family.split("/")
        return f"{labels[method]}, lr {lr} (round)"
    if family.startswith("ablation/"):
        return f"{labels[IPC]}, {next(p.label for p in POINTS.values() if p.family == family)}"
    if family in ITERATIVE:
        return f"{labels[family]} (round)"
    method, _, lever = family.partition("/")
    return f"{labels[method]} (one round, {lever or {'dpo': 'β', 'binary_cringe': 'α'}.get(method, 'demo')})"


def point_row(demo, run_dir: Path, k: int, method: str, setting: str, family: str) -> dict:
    """One evaluated policy: the loop's comparison (gold-scored), its proxy reward, and where it came from."""
    from cringe.evaluate import mean_with_ci
    from cringe.loop.rundir import RunDir

    run = RunDir(run_dir)
    comparison = run.evaluation(k)
    proxy = demo.proxy_scores(run.file(k, rundir.EVAL_SAMPLES), run.file(k, rundir.EVAL_PROXY_SCORES))
    return {
        "family": family,
        "method": method,
        "setting": setting,
        "round": k,
        "dir": str(run_dir),
        "kl": comparison["kl"],
        "gold_reward": comparison["reward"],
        "win_rate": comparison["win_rate"],
        "proxy_reward": mean_with_ci(proxy, seed=demo.seed),
        "length": comparison["text"]["length_tokens"],
        "train_seconds": run.seconds(rundir.MODEL, k),
    }


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) in closed form, log n - (n - 1) / n: exact for distinct samples, an upper bound in
    general (ties between samples lower it)."""
    return math.log(n) - (n - 1) / n


def best_of_n_rows(demo, m0, out: Path, n_max: int) -> list[dict]:
    """n_max samples of the start model on every held-out prompt (drawn once, resumable); for n = 1, 2, 4, ...,
    n_max the first n samples of each prompt, the one the proxy ranks highest kept, scored by the gold examiner."""
    from cringe.evaluate import mean_with_ci, win_rate

    out.mkdir(parents=True, exist_ok=True)
    samples_path, gold_path = out / "samples.jsonl", out / "gold_scores.jsonl"
    prompts = m0.prompts(evaluation=True)
    if not samples_path.exists():
        logging.info("best-of-n: %d samples on each of %d held-out prompts", n_max, len(prompts))
        m0.sample(0, prompts, samples_path, n=n_max, stream="best_of_n", evaluation=True)
    samples = m0.run_dir.samples(samples_path)
    per_prompt = Counter(s.prompt_id for s in samples)
    drawn = min(per_prompt[p.prompt_id] for p in prompts)
    if drawn < n_max:
        raise SystemExit(f"{samples_path} holds {drawn} samples per prompt, not {n_max}: remove {out} to redraw")
    gold = (
        m0.run_dir.scores(gold_path, samples=samples_path)
        if gold_path.exists()
        else m0.score(prompts, samples, gold_path, evaluation=True)
    )
    proxy = demo.proxy_scores(samples_path, out / "proxy_scores.jsonl")
    by_prompt: dict[int, list[tuple]] = {}
    for s, g, p in zip(samples, gold, proxy):
        by_prompt.setdefault(s.prompt_id, []).append((s.sample_id, p, g, s.num_tokens))
    base = m0.run_dir
    base_gold = {}
    for s, g in zip(base.samples(base.baseline_samples), base.scores(base.baseline_scores)):
        base_gold.setdefault(s.prompt_id, []).append(g)
    ids = sorted(by_prompt)
    rows = []
    for n in sorted({2**i for i in range(n_max.bit_length()) if 2**i <= n_max} | {n_max}):
        picked = [max(sorted(by_prompt[i])[:n], key=lambda t: t[1]) for i in ids]
        gold_n = [t[2] for t in picked]
        kl = best_of_n_kl(n)
        rows.append(
            {
                "family": "best_of_n",
                "method": "best_of_n",
                "setting": f"n {n}",
                "round": 0,
                "dir": str(out),
                "kl": {"mean": kl, "ci_low": kl, "ci_high": kl},
                "gold_reward": mean_with_ci(gold_n, seed=demo.seed),
                "win_rate": win_rate(gold_n, [sum(base_gold[i]) / len(base_gold[i]) for i in ids], seed=demo.seed),
                "proxy_reward": mean_with_ci([t[1] for t in picked], seed=demo.seed),
                "length": sum(t[3] for t in picked) / len(picked),
                "train_seconds": 0.0,
            }
        )
    return rows


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of y at x along points sorted by x; None outside their range (no extrapolation)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def family_curve(rows: list[dict], start: dict, family: str) -> list[tuple[float, float]]:
    """(KL, gold reward) of a family's points sorted by KL, starting at the start model (0, its reward)."""
    pts = sorted((r["kl"]["mean"], r["gold_reward"]["mean"]) for r in rows if r["family"] == family)
    return pts if family == "best_of_n" else [(0.0, start["mean"])] + pts  # best-of-n's n = 1 is the start


def family_style(family: str) -> tuple[str, str, str]:
    if family.startswith("lr/"):
        return "c", ":" if float(family.split("/")[2]) < 1e-4 else "--", "o"
    return STYLES.get(family, ("a", "-", "o"))


def plot(rows: list[dict], start: dict, start_proxy: dict, families: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cringe.report import _colour, _interval, _save

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.6))
    panels = {"a": axes[0, 0], "b": axes[0, 1], "c": axes[1, 0]}
    bx = axes[1, 1]
    titles = {
        "a": "(a) methods and baselines",
        "b": "(b) Pairwise Cringe's ablations (3 rounds)",
        "c": "(c) learning rates (the demo's is 1e-4)",
    }
    for ax in panels.values():
        ax.errorbar(
            [0.0],
            [start["mean"]],
            yerr=_interval([start]),
            marker="s",
            color=_colour("sft"),
            capsize=3,
            linestyle="none",
            label="start model (SFT)",
        )
    bx.errorbar(
        [start_proxy["mean"]],
        [start["mean"]],
        xerr=_interval([start_proxy]),
        yerr=_interval([start]),
        marker="s",
        color=_colour("sft"),
        capsize=3,
        linestyle="none",
        label="start model (SFT)",
    )
    # the demo's own curves each panel is read against: an ablation against Pairwise Cringe and SFT on the best
    # sample, a learning rate against the method at the demo's
    references = {IPC: ("b", "c"), ISFT: ("b", "c"), IDPO: ("c",)}
    for family, label in families.items():
        pts = sorted((r for r in rows if r["family"] == family), key=lambda r: r["kl"]["mean"])
        if not pts:
            continue
        panel, line, marker = family_style(family)
        colour = BEST_OF_N_COLOUR if family == "best_of_n" else _colour(pts[0]["method"])
        on = [panel] + [p for p in references.get(family, ()) if p != panel]
        for name in on:
            ax = panels[name]
            first = [] if family == "best_of_n" else [(0.0, start["mean"])]
            xs = [x for x, _ in first] + [r["kl"]["mean"] for r in pts]
            ys = [y for _, y in first] + [r["gold_reward"]["mean"] for r in pts]
            faint = name != panel
            ax.plot(xs, ys, color=colour, alpha=0.25 if faint else 0.5, linestyle="-" if line == "none" else line)
            ax.errorbar(
                [r["kl"]["mean"] for r in pts],
                [r["gold_reward"]["mean"] for r in pts],
                yerr=_interval([r["gold_reward"] for r in pts]),
                xerr=_interval([r["kl"] for r in pts]),
                marker=marker,
                capsize=2,
                color=colour,
                linestyle="none",
                alpha=0.35 if faint else 1.0,
                label=label + (" (the demo's)" if faint else ""),
            )
            if not faint:
                for r in pts:
                    ax.annotate(
                        r["setting"],
                        (r["kl"]["mean"], r["gold_reward"]["mean"]),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                        color=colour,
                    )
        bx.errorbar(
            [r["proxy_reward"]["mean"] for r in pts],
            [r["gold_reward"]["mean"] for r in pts],
            xerr=_interval([r["proxy_reward"] for r in pts]),
            yerr=_interval([r["gold_reward"] for r in pts]),
            marker=marker,
            capsize=2,
            color=colour,
            linestyle="none",
            label=label,
            alpha=0.85,
        )
    n = start["n"]
    for name, ax in panels.items():
        ax.set_xlabel("KL(policy || start), nats per completion (95% CI)")
        ax.set_ylabel(f"gold reward P(positive), n = {n} (95% CI)")
        ax.set_title(titles[name], fontsize=10)
        ax.legend(fontsize=6.5, loc="lower right")
    bx.set_xlabel("proxy reward (the labeller's logit), mean (95% CI)")
    bx.set_ylabel("gold reward (95% CI)")
    bx.set_title("(d) proxy against gold: over-optimisation would bend this over", fontsize=10)
    bx.legend(fontsize=5.5, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def chosen_points(spec: str | None) -> list[str]:
    if not spec:
        return list(POINTS)
    names = []
    for item in (s.strip() for s in spec.split(",")):
        if item in GROUPS:
            names += [n for n, p in POINTS.items() if p.group == item]
        elif item in POINTS:
            names.append(item)
        else:
            sys.exit(f"unknown point or group {item!r}; groups {sorted(GROUPS)}, points {list(POINTS)}")
    return list(dict.fromkeys(names))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def point_config(demo, name: str, out: Path, demo_dir: Path):
    """The point's run configuration; a point that extends the demo starts from a copy of the demo's run."""
    point = POINTS[name]
    config = demo.method_config(point.method)
    rounds = point.rounds or config.rounds
    run_dir = out / "points" / name
    if point.extends_demo and not run_dir.exists():
        # hard links: run files are replaced by rename, never written in place, so the demo's run is never touched
        tmp = run_dir.with_name(f".{name}.copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            demo_dir / "methods" / point.method,
            tmp,
            copy_function=_link_or_copy,
            ignore=shutil.ignore_patterns(".lock", ".*.tmp-*"),
        )  # the lock is the run's own
        os.replace(tmp, run_dir)
    return dataclasses.replace(
        config,
        output_dir=str(run_dir),
        rounds=rounds,
        train={**config.train, **point.train},
        eval_every=rounds if point.eval_last_only else config.eval_every,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="runs/demo")
    parser.add_argument("--output-dir", default="runs/frontier")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (the demo directory's)")
    parser.add_argument("--points", help=f"comma-separated points or groups {sorted(GROUPS)}; default: every point")
    parser.add_argument(
        "--methods",
        default=",".join((*ONE_ROUND, IDPO, IPC, ISFT)),
        help="the demo methods drawn at their demo settings (run in --demo-dir when missing)",
    )
    parser.add_argument(
        "--results-dir",
        default=None,
        help="also copy the report there, dated (default: bench/results for the default preset, "
        "nowhere for the others, so a smoke check never replaces a measured frontier)",
    )
    parser.add_argument("--best-of-n", type=int, default=16, help="largest n of the best-of-n baseline (0: none)")
    args = parser.parse_args()
    if args.results_dir is None and args.preset == "default":
        args.results_dir = str(ROOT / "bench" / "results")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cringe").setLevel(logging.INFO)

    from cringe.demo.pipeline import LABELS, PRESETS, Demo, machine_description
    from cringe.evaluate import mean_with_ci
    from cringe.loop.run import IterativeRun
    from cringe.loop.rundir import RunDir

    started = time.time()
    chosen = chosen_points(args.points)
    methods = tuple(m.strip() for m in args.methods.split(","))
    needed = tuple(dict.fromkeys(methods + tuple(POINTS[n].method for n in chosen if POINTS[n].extends_demo)))
    preset = dataclasses.replace(PRESETS[args.preset], methods=needed)
    out, demo_dir = Path(args.output_dir), Path(args.demo_dir)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(preset, args.demo_dir, seed=args.seed)
    demo.plan()
    demo.assets()
    m0 = demo.m0()
    demo.run_methods(m0)  # the demo-setting points (resumed: nothing is redone when the demo has finished)

    seconds = {}
    rows = []
    if args.best_of_n:
        t0 = time.time()
        done = (out / "best_of_n" / "gold_scores.jsonl").exists()
        rows += best_of_n_rows(demo, m0, out / "best_of_n", args.best_of_n)
        if not done:
            seconds["best-of-n"] = round(time.time() - t0, 1)
    for name in chosen:
        config = point_config(demo, name, out, demo_dir)
        run = IterativeRun(config)
        finished_before = run.run_dir.evaluation(config.rounds) is not None
        logging.info(
            "frontier point %s: %s, %d rounds, %s", name, POINTS[name].method, config.rounds, POINTS[name].train
        )
        t0 = time.time()
        run.run()
        if not finished_before:
            seconds[name] = round(time.time() - t0, 1)

    for method in (m for m in methods if m in ONE_ROUND):
        run_dir = demo_dir / "methods" / method
        k = RunDir(run_dir).evaluated_rounds()[-1]
        levers = {POINTS[n].family for n in chosen if POINTS[n].method == method} or {method}
        for family in sorted(levers):
            rows.append(point_row(demo, run_dir, k, method, DEFAULT_LABELS[method] + " (demo)", family))
    extended = {POINTS[n].method: out / "points" / n for n in chosen if POINTS[n].extends_demo}
    for method in dict.fromkeys(m for m in (*methods, *extended) if m in ITERATIVE):
        run_dir = extended.get(method, demo_dir / "methods" / method)
        for k in RunDir(run_dir).evaluated_rounds():
            rows.append(point_row(demo, run_dir, k, method, f"round {k}", method))
    for name in chosen:
        point = POINTS[name]
        if point.extends_demo:
            continue
        run = RunDir(out / "points" / name)
        for k in run.evaluated_rounds():
            setting = point.label or f"round {k}"
            rows.append(point_row(demo, run.path, k, point.method, setting, point.family))

    families = {f: family_label(f, LABELS) for f in dict.fromkeys(r["family"] for r in rows)}
    base = RunDir(demo_dir / "m0")
    start = mean_with_ci(base.scores(base.baseline_scores), seed=demo.seed)
    start_proxy = mean_with_ci(
        demo.proxy_scores(base.baseline_samples, base.path / rundir.BASELINE_PROXY_SCORES), seed=demo.seed
    )
    plot(rows, start, start_proxy, families, out / "frontier.png")
    text = report(rows, start, start_proxy, families, demo, args, seconds, started, machine_description(), LABELS)
    (out / "frontier.md").write_text(text + "\n")
    (out / "frontier.json").write_text(
        json.dumps({"start": start, "start_proxy": start_proxy, "rows": rows, "seconds": seconds}, indent=2)
    )
    if args.results_dir:
        results = Path(args.results_dir)
        results.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d")
        (results / f"frontier-{stamp}.md").write_text(
            text.replace("](frontier.png)", f"](frontier-{stamp}.png)") + "\n"
        )
        shutil.copyfile(out / "frontier.png", results / f"frontier-{stamp}.png")
    print(text)


def lr_table(rows: list[dict], labels: dict, rounds: int, demo_lr: float) -> list[str]:
    """Each iterative method's last round (`rounds`) at every learning rate swept, its best (by gold reward) in
    bold."""
    by_method: dict[str, dict[float, dict]] = {}
    for r in rows:
        if r["family"] in ITERATIVE and r["round"] == rounds:  # the demo's own setting
            by_method.setdefault(r["family"], {})[demo_lr] = r
        elif r["family"].startswith("lr/"):
            _, method, lr = r["family"].split("/")
            if r["round"] == rounds:
                by_method.setdefault(method, {})[float(lr)] = r
    if not any(len(v) > 1 for v in by_method.values()):
        return []
    lines = [
        f"| method | lr | gold reward after {rounds} rounds (95% CI) | gold win rate vs start | KL to start |",
        "|---|---|---|---|---|",
    ]
    for method, by_lr in by_method.items():
        best = max(by_lr, key=lambda lr: by_lr[lr]["gold_reward"]["mean"])
        for lr in sorted(by_lr):
            r, b = by_lr[lr], "**" if lr == best else ""
            g, w = r["gold_reward"], r["win_rate"]
            lines.append(
                f"| {labels[method]} | {b}{lr_name(lr)}{b} | {b}{g['mean']:.3f}{b} ({g['ci_low']:.3f}.."
                f"{g['ci_high']:.3f}) | {w['win_rate']:.3f} ({w['ci_low']:.3f}..{w['ci_high']:.3f}) | "
                f"{r['kl']['mean']:.1f} |"
            )
    return [
        "## Learning rates",
        "",
        f"Each iterative method after {rounds} rounds at each learning rate, one seed; bold: its best by gold reward. "
        "Chosen on the held-out prompts themselves, so the best setting's number is optimistic.",
        "",
        *lines,
        "",
    ]


def report(rows, start, start_proxy, families, demo, args, seconds, started, machine, labels) -> str:
    curves = {f: family_curve(rows, start, f) for f in families}
    top = max(r["kl"]["mean"] for r in rows)
    grid = [kl for kl in (1, 2.5, 5, 7.5, 10, 15, 20, 30, 40) if kl <= top]
    matched = [
        "| curve (what varies) | " + " | ".join(f"KL {kl:g}" for kl in grid) + " |",
        "|---|" + "---|" * len(grid),
    ]
    for f, label in families.items():
        if f.startswith("ablation/"):
            continue  # one point each: in the table above, not a curve
        cells = [interpolate(curves[f], kl) for kl in grid]
        matched.append(f"| {label} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines = [
        "| curve | setting | KL to start (95% CI) | gold reward (95% CI) | gold win rate vs start (95% CI) | "
        "proxy reward | length | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (list(families).index(r["family"]), r["round"], r["kl"]["mean"])):
        kl, g, w = r["kl"], r["gold_reward"], r["win_rate"]
        lines.append(
            f"| {families[r['family']]} | {r['setting']} | {kl['mean']:.1f} ({kl['ci_low']:.1f}.."
            f"{kl['ci_high']:.1f}) | {g['mean']:.3f} ({g['ci_low']:.3f}..{g['ci_high']:.3f}) | "
            f"{w['win_rate']:.3f} ({w['ci_low']:.3f}..{w['ci_high']:.3f}) | {r['proxy_reward']['mean']:.2f} | "
            f"{r['length']:.1f} | {r['train_seconds'] or 0:.0f} |"
        )
    return "\n".join(
        [
            f"# The reward-KL frontier on the demo's testbed ({args.preset} preset, seed {demo.seed})",
            "",
            f"`python bench/research/frontier.py {' '.join(sys.argv[1:])}` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
            f"{machine} · this call {(time.time() - started) / 60:.1f} min ({len(seconds)} points computed in this "
            "call, the rest resumed: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")",
            "",
            f"Start model: gold reward {start['mean']:.3f} ({start['ci_low']:.3f}..{start['ci_high']:.3f}), proxy "
            f"{start_proxy['mean']:.2f}. Every trained point starts from the demo's M0 samples (iterative methods: "
            f"round 1) and is evaluated on the same {start['n']} held-out prompts, one sample each; best-of-n draws "
            "its n samples on the same prompts. Win rates are per prompt against the start model's sample.",
            "",
            *lines,
            "",
            "## Gold reward at matched KL",
            "",
            "Linear interpolation along each curve from the start model (KL 0); blank: outside the KL range the curve "
            "reached (no extrapolation). Best-of-n's KL is its closed form, an upper bound.",
            "",
            *matched,
            "",
            *lr_table(rows, labels, demo.preset.rounds, demo.preset.learning_rate),
            "![frontier](frontier.png)",
        ]
    )


if __name__ == "__main__":
    main()
