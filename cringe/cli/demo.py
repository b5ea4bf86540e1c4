"""`cringe demo`: the paper's comparison reproduced offline on a CPU (cringe.demo.pipeline): every method from
the same start model and the same labelled-sample budget, judged by a gold examiner on held-out prompts."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cringe.config import make_parser, parse
from cringe.demo.pipeline import METHODS, PRESETS, Demo, format_duration
from cringe.errors import UserError


@dataclass
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "where everything lands; rerun to resume"})
    quick: bool = field(
        default=False,
        metadata={
            "help": "the small preset: the iterative comparison only (start model, DPO, Iterative DPO, Iterative "
            "Pairwise Cringe), about 5 minutes on 2 CPU cores from an empty cache"
        },
    )
    preset: str | None = field(
        default=None, metadata={"help": "default | quick | smoke (tests)", "choices": tuple(sorted(PRESETS))}
    )
    methods: str | None = field(default=None, metadata={"help": f"comma-separated subset of {','.join(METHODS)}"})
    seed: int = 0


def parsers() -> dict:
    return {"": make_parser(DemoArguments, prog="cringe demo", description=__doc__)}


def main(argv: list[str]) -> None:
    (args,) = parse(parsers()[""], argv, 1)
    preset = PRESETS[args.preset or ("quick" if args.quick else "default")]
    if args.methods:
        chosen = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            raise UserError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        preset = dataclasses.replace(preset, methods=chosen)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cringe").setLevel(logging.INFO)
    command = "cringe demo " + " ".join(argv)
    results = Demo(preset, args.output_dir, seed=args.seed).run(command.strip())
    print("\n" + (Path(args.output_dir) / "report.md").read_text())
    print(
        f"report: {Path(args.output_dir) / 'report.html'} (wall time "
        f"{format_duration(results['meta']['wall_seconds'])})"
    )
