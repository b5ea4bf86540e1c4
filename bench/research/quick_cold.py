"""`cringe demo --quick` from an empty cache, seed by seed: the quick preset's aims measured as a user meets them.

    python bench/research/quick_cold.py --seeds 0 [--out bench/results/quick_cold-2026-12-03-xeon.md]

Each seed runs `cringe demo --quick --seed S` in a subprocess with CRINGE_CACHE pointed at a new empty folder and a
new output folder (both temporary, removed afterwards), so the gold judge, the proxy reward model and the policy's
conversion are all built inside the timed command; the user's own cache is not touched. The wall time is the
subprocess's, start-up and imports included. Rows are kept in a JSON file beside the markdown (same name, .json),
one per seed and commit, so seeds run as separate commands (one CPU lock each) add up to one table.

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

AIM_SECONDS, AIM_PROXY, AIM_LOW = 300.0, 0.75, 0.5
CHECKED = "iterative_pairwise_cringe"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


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
        "preset": {k: meta["preset"][k] for k in ("rounds", "round_prompts", "eval_prompts", "methods", "sizes")},
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


def earlier_tries(rows: list[dict]) -> list[str]:
    """One line per run of another preset (the tries the preset was chosen from)."""
    if not rows:
        return []
    out = [
        "Earlier tries, with other presets (the choice was made from these):",
        "",
        "| seed | rounds x prompts | evaluation prompts | wall s | policy conversion s | proxy accuracy | "
        "Iterative Pairwise Cringe | date |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, p = r["methods"][CHECKED], r["preset"]
        out.append(
            f"| {r['seed']} | {p['rounds']} x {p['round_prompts']} | {p['eval_prompts']} | {r['wall_seconds']:.0f} | "
            f"{r['stage_seconds'].get('policy', float('nan')):.0f} | {r['proxy_accuracy']:.3f} | "
            f"{w['win_rate']:.3f} ({w['ci_low']:.3f}..{w['ci_high']:.3f}) | {r['date']} |"
        )
    return [*out, ""]


def markdown(rows: list[dict], earlier: list[dict] = ()) -> str:
    from cringe.demo.pipeline import LABELS

    methods = [m for m in rows[0]["methods"]]
    head = (
        "| seed | commit | wall s | policy conversion s | proxy accuracy | gold accuracy | "
        + " | ".join(f"{LABELS[m]}: win rate (95% CI)" for m in methods)
        + " | aims met |\n|"
        + "---|" * (7 + len(methods))
    )
    lines = []
    for r in rows:
        met = aims_met(r)
        cells = [
            f"{w['win_rate']:.3f} ({w['ci_low']:.3f}..{w['ci_high']:.3f})" for w in (r["methods"][m] for m in methods)
        ]
        verdict = "all three" if all(met.values()) else "missed: " + ", ".join(k for k, ok in met.items() if not ok)
        lines.append(
            f"| {r['seed']} | {r['commit']}{' +' if r['uncommitted'] else ''} | {r['wall_seconds']:.0f} | "
            f"{r['stage_seconds'].get('policy', float('nan')):.0f} | "
            f"{r['proxy_accuracy']:.3f} | {r['gold_accuracy']:.3f} | " + " | ".join(cells) + f" | {verdict} |"
        )
    stages = [
        "| seed | " + " | ".join(rows[0]["stage_seconds"]) + " |",
        "|" + "---|" * (1 + len(rows[0]["stage_seconds"])),
    ]
    for r in rows:
        stages.append(f"| {r['seed']} | " + " | ".join(f"{s:.0f}" for s in r["stage_seconds"].values()) + " |")
    dirty = sorted({f for r in rows for f in r["uncommitted"]})
    return "\n".join(
        [
            "# `cringe demo --quick` from an empty cache, 3 seeds (bench/research/quick_cold.py)",
            "",
            "Per seed, one command under the CPU lock: `CRINGE_CACHE=<new empty folder> cringe demo --quick --seed S "
            "--output_dir <new folder>` (run by `python bench/research/quick_cold.py --seeds S`). Wall: the "
            "subprocess, start-up included. The policy's conversion is the same work in every run: its seconds show "
            f"how busy the shared machine was. CPU: {rows[0]['cpu']} ({rows[0]['machine']}). Preset: "
            f"{json.dumps(rows[0]['preset'])}. Aims: at most {AIM_SECONDS:.0f} s, proxy accuracy at least "
            f"{AIM_PROXY}, the Iterative Pairwise Cringe interval's low above {AIM_LOW}.",
            "",
            head,
            *lines,
            "",
            "Dates: " + ", ".join(f"seed {r['seed']} {r['date']}" for r in rows) + ". A commit marked `+` ran with "
            "uncommitted changes under cringe/ in the shared checkout" + (f" ({', '.join(dirty)})." if dirty else "."),
            "",
            "Seconds per stage (results.json `meta.stage_seconds`):",
            "",
            *stages,
            "",
            *earlier_tries(list(earlier)),
        ]
    )


def main() -> None:
    from cringe.durable.files import write_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", default="bench/results/quick_cold-2026-12-03-xeon.md")
    args = parser.parse_args()
    store = Path(args.out).with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else []
    for seed in args.seeds:
        row = run_cold(seed)
        print(json.dumps({k: row[k] for k in ("seed", "wall_seconds", "proxy_accuracy", "methods")}), flush=True)
        rows.append(row)  # every try is kept in the JSON; the markdown shows the last preset's rows
        write_atomic(store, json.dumps(rows, indent=1) + "\n")
    if rows:
        latest = [r for r in rows if r["preset"] == rows[-1]["preset"]]
        last_per_seed = {r["seed"]: r for r in latest}
        earlier = [r for r in rows if r["preset"] != rows[-1]["preset"]]
        write_atomic(args.out, markdown([last_per_seed[s] for s in sorted(last_per_seed)], earlier))
        print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
