"""`cringe iterate`: iterative preference training, sample -> score -> pair -> train -> evaluate, round after round
(resumable). Its arguments are cringe.loop.config.IterateConfig, which the demo and Python callers share."""

from __future__ import annotations

import sys
from pathlib import Path

from cringe.loop.config import iterate_parser, parse_iterate_args, section_parsers
from cringe.loop.run import IterativeRun, evaluation_table
from cringe.recipes import dry_run
from cringe.report import write_run_report


def parsers() -> dict:
    return {"": iterate_parser(), **{name: p for name, p in section_parsers().items() if p is not None}}


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        iterate_parser().print_help()
        sys.exit(0)
    if "--dry-run" in argv or "--dry_run" in argv:  # every key checked offline; nothing loaded (recipes/)
        print(dry_run([a for a in argv if a not in ("--dry-run", "--dry_run")]))
        return
    config = parse_iterate_args(argv)
    evaluations = IterativeRun(config).run()
    if evaluations:
        print("\n" + evaluation_table(evaluations))
    page = write_run_report([config.output_dir], Path(config.output_dir) / "report")
    print(f"\nreport: {page} (and report.md beside it; `cringe report` redraws it)")
