"""Where a `cringe demo` run's wall time went: set-up, M0, and each method's sampling, training and evaluation.

    CRINGE_CACHE=$(mktemp -d) cringe demo --quick --output_dir runs/quick   # cold: the set-up is timed too
    python bench/demo_time.py runs/quick [more demo directories, side by side]

Reads the stage times the demo records in results.json (meta.stage_seconds: the stages of the call that wrote
it; stages an earlier call had finished are absent, so time a demo in one cold call). Prints one table: seconds
per stage group, and each group's share of the wall time.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SET_UP = ("data splits and prompt files", "gold judge", "proxy reward model", "policy")
STEP_NAMES = {"samples.jsonl": "sampling", "model": "training", "eval.json": "evaluation"}


def groups(stage_seconds: dict[str, float]) -> dict[str, float]:
    """Stage seconds summed into set-up, M0, '<method>: sampling|training|evaluation' and the report."""
    out: dict[str, float] = {}
    for name, seconds in stage_seconds.items():
        step = re.fullmatch(r"(\w+) round \d+: (\S+)", name)
        if name in SET_UP:
            key = f"set-up: {name}"
        elif step:
            key = f"{step.group(1)}: {STEP_NAMES.get(step.group(2), step.group(2))}"
        else:
            key = name
        out[key] = out.get(key, 0.0) + seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dirs", nargs="+")
    args = parser.parse_args()
    runs = {}
    for d in args.demo_dirs:
        meta = json.loads((Path(d) / "results.json").read_text())["meta"]
        if "stage_seconds" not in meta:
            raise SystemExit(f"{d}: results.json has no stage times (written before they were recorded)")
        runs[d] = (meta, groups(meta["stage_seconds"]))
    keys = list(dict.fromkeys(k for _, g in runs.values() for k in g))
    keys.sort(key=lambda k: (not k.startswith("set-up"), not k.startswith("M0"), k))
    print("| stage | " + " | ".join(f"{d}: s (share of wall)" for d in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for key in keys:
        cells = [f"{g[key]:.0f} ({g[key] / m['wall_seconds']:.0%})" if key in g else "" for m, g in runs.values()]
        print(f"| {key} | " + " | ".join(cells) + " |")
    for what in ("sampling", "training", "evaluation"):
        cells = []
        for m, g in runs.values():
            total = sum(v for k, v in g.items() if k.endswith(f": {what}"))
            cells.append(f"{total:.0f} ({total / m['wall_seconds']:.0%})")
        print(f"| **every method's {what}** | " + " | ".join(cells) + " |")
    cells = []
    for m, g in runs.values():
        rest = m["wall_seconds"] - sum(g.values())
        cells.append(f"{rest:.0f} ({rest / m['wall_seconds']:.0%})")
    print("| other (start-up, scoring and pairing, collecting the results) | " + " | ".join(cells) + " |")
    print("| **wall** | " + " | ".join(f"{m['wall_seconds']:.0f}" for m, _ in runs.values()) + " |")
    for d, (m, _) in runs.items():
        print(f"\n{d}: `{m['command']}` · {m['date']} · {m['machine']}")


if __name__ == "__main__":
    main()
