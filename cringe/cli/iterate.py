"""`cringe iterate`: iterative preference training, sample -> score -> pair -> train -> evaluate, round after round
(resumable). Its arguments are cringe.loop.config.IterateConfig, which the demo and Python callers share."""

from __future__ import annotations

import sys

from cringe.loop.config import iterate_parser, parse_iterate_args, section_parsers
from cringe.loop.run import IterativeRun, evaluation_table


def parsers() -> dict:
    return {"": iterate_parser(), **{name: p for name, p in section_parsers().items() if p is not None}}


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        iterate_parser().print_help()
        sys.exit(0)
    evaluations = IterativeRun(parse_iterate_args(argv)).run()
    if evaluations:
        print("\n" + evaluation_table(evaluations))
