"""`cringe demo --quick` from an empty cache, seed by seed: the quick preset's aims measured as a user meets them.

    python bench/research/quick_cold.py --seeds 0 1 2 [--out bench/results/quick_cold-<date>-<cpu>.md]
    python bench/research/quick_cold.py --seeds        (no run: rewrites the markdown from the JSON)

Each seed runs `cringe demo --quick --seed S` in a subprocess with CRINGE_CACHE pointed at a new empty folder and a
new output folder (both temporary, removed afterwards), so the gold judge, the proxy reward model and the policy's
conversion are all built inside the timed command; the user's own cache is not touched. The wall time is the
subprocess's, start-up and imports included. Every run is kept, a row each, keyed by seed, date and commit: in a
JSON file beside the markdown (same name, .json), and the markdown is rewritten from all of them, so seeds run as
separate commands (one CPU lock each) add up to one table and a rerun adds a row rather than replacing one.

The aims (issue 29): at most 300 s on 2 CPU cores, the proxy's held-out accuracy at least 0.75, and Iterative
Pairwise Cringe's 95% interval above 0.5 on every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cringe.machine import cpu_label, cpu_model

AIM_SECONDS, AIM_PROXY, AIM_LOW = 300.0, 0.75, 0.5
CHECKED = "iterative_pairwise_cringe"
# what tells the presets apart in the table (the runs before the proxy's settings were recorded lack the proxy's)
PRESET_KEYS = ("rounds", "round_prompts", "eval_prompts", "methods", "sizes")
PRESET_KEYS += ("proxy_trained_layers", "proxy_learning_rate", "proxy_max_length", "proxy_epochs")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()


def run_cold(seed: int) -> dict:
    """One cold demo; returns its row (the demo's results.json read back before the temporary folders go)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"quick-cold-{seed}-"))
    try:
        cache, out = scratch / "cache", scratch / "demo"
        env = {**os.environ, "CRINGE_CACHE": str(cache)}
        command = [str(Path(sys.executable).with_name("cringe")), "demo", "--quick", "--seed", str(seed)]
        command += ["--output_dir", str(out)]
        t0 = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.time() - t0
        if done.returncode != 0:
            raise SystemExit(f"seed {seed}: the demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results = json.loads((out / "results.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = results["meta"]
    return {
        "seed": seed,
        "wall_seconds": round(wall, 1),
        "demo_wall_seconds": meta["wall_seconds"],
        "proxy_accuracy": meta["reward_models"]["proxy_reward_model"]["accuracy"],
        "gold_accuracy": meta["reward_models"]["gold_judge"]["accuracy"],
        "methods": {
            r["method"]: {k: r["win_rate"][k] for k in ("win_rate", "ci_low", "ci_high", "n")}
            for r in results["rows"]
            if r["win_rate"] is not None
        },
        "kl": {r["method"]: r["kl"]["mean"] for r in results["rows"]},
        "stage_seconds": meta["stage_seconds"],
        "preset": {k: meta["preset"][k] for k in PRESET_KEYS if k in meta["preset"]},
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "cringe").splitlines(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "machine": meta["machine"],
    }


def aims_met(row: dict) -> dict[str, bool]:
    return {
        "time": row["wall_seconds"] <= AIM_SECONDS,
        "proxy": row["proxy_accuracy"] >= AIM_PROXY,
        "interval": row["methods"][CHECKED]["ci_low"] > AIM_LOW,
    }


def preset_label(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else f"P{index}"


def markdown(rows: list[dict]) -> str:
    """Every run, in the order they ran, keyed by seed, date and commit; presets named A, B, ... as they appear."""
    from cringe.demo.pipeline import LABELS

    presets: list[str] = []
    for r in rows:
        if json.dumps(r["preset"], sort_keys=True) not in presets:
            presets.append(json.dumps(r["preset"], sort_keys=True))
    label = {p: preset_label(i) for i, p in enumerate(presets)}
    methods = list(dict.fromkeys(m for r in rows for m in r["methods"]))
    head = (
        "| seed | date | commit | preset | wall s | policy conversion s | proxy accuracy | gold accuracy | "
        + " | ".join(f"{LABELS[m]}: win rate (95% CI)" for m in methods)
        + " | aims met |\n|"
        + "---|" * (9 + len(methods))
    )
    lines = []
    for r in rows:
        met = aims_met(r)
        cells = [
            f"{w['win_rate']:.3f} ({w['ci_low']:.3f}..{w['ci_high']:.3f})" if w else "-"
            for w in (r["methods"].get(m) for m in methods)
        ]
        verdict = "all three" if all(met.values()) else "missed: " + ", ".join(k for k, ok in met.items() if not ok)
        lines.append(
            f"| {r['seed']} | {r['date']} | {r['commit']}{' +' if r['uncommitted'] else ''} | "
            f"{label[json.dumps(r['preset'], sort_keys=True)]} | {r['wall_seconds']:.0f} | "
            f"{r['stage_seconds'].get('policy', float('nan')):.0f} | "
            f"{r['proxy_accuracy']:.3f} | {r['gold_accuracy']:.3f} | " + " | ".join(cells) + f" | {verdict} |"
        )
    stage_names = list(dict.fromkeys(name for r in rows for name in r["stage_seconds"]))
    stages = [
        "| seed | date | " + " | ".join(stage_names) + " |",
        "|" + "---|" * (2 + len(stage_names)),
    ]
    for r in rows:
        seconds = (r["stage_seconds"].get(name) for name in stage_names)
        stages.append(
            f"| {r['seed']} | {r['date']} | " + " | ".join("-" if s is None else f"{s:.0f}" for s in seconds) + " |"
        )
    dirty = sorted({f for r in rows for f in r["uncommitted"]})
    machines = sorted({f"{r['cpu']} ({r['machine']})" for r in rows})
    return "\n".join(
        [
            "# `cringe demo --quick` from an empty cache, every run (bench/research/quick_cold.py)",
            "",
            "Per run, one command under the CPU lock: `CRINGE_CACHE=<new empty folder> cringe demo --quick --seed S "
            "--output_dir <new folder>` (run by `python bench/research/quick_cold.py --seeds S`). Every run is kept, "
            "in the order they ran (the rows are in the JSON file beside this one). Wall: the subprocess, start-up "
            "included. The policy's conversion is the same work in every run: its seconds show how busy the shared "
            f"machine was. CPU: {'; '.join(machines)}. Aims: at most {AIM_SECONDS:.0f} s, proxy accuracy at least "
            f"{AIM_PROXY}, the Iterative Pairwise Cringe interval's low above {AIM_LOW}.",
            "",
            "Presets (the quick preset as each run had it; one without `proxy_*` keys ran before they were recorded, "
            "and its proxy fine-tuned the whole MiniLM):",
            "",
            *(f"- {label[p]}: `{p}`" for p in presets),
            "",
            head,
            *lines,
            "",
            "A commit marked `+` ran with uncommitted changes under cringe/ in the shared checkout"
            + (f" ({', '.join(dirty)})." if dirty else "."),
            "",
            "Seconds per stage (results.json `meta.stage_seconds`; - where a run had no such stage):",
            "",
            *stages,
            "",
        ]
    )


def main() -> None:
    from cringe.durable.files import write_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    results = Path(__file__).resolve().parents[1] / "results"
    parser.add_argument("--out", default=results / f"quick_cold-{time.strftime('%Y-%m-%d')}-{cpu_label()}.md")
    args = parser.parse_args()
    store = Path(args.out).with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else []
    for seed in args.seeds:
        row = run_cold(seed)
        print(json.dumps({k: row[k] for k in ("seed", "wall_seconds", "proxy_accuracy", "methods")}), flush=True)
        rows.append(row)  # every run is kept, in the JSON and in the markdown
        write_atomic(store, json.dumps(rows, indent=1) + "\n")
    if rows:
        write_atomic(args.out, markdown(rows))
        print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
