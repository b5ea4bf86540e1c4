"""`cringe report RUN [RUN ...]`: a report (markdown and one self-contained HTML page) for `cringe iterate` run
directories, one or several side by side; the renderer is cringe.report's, the demo's too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cringe.config import make_parser, parse
from cringe.errors import UserError


@dataclass
class ReportArguments:
    runs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "`cringe iterate` run directories (also as positional arguments: cringe report RUN [RUN ...])"
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "where report.md, report.html and the plots go (default: RUN/report for one run; required for "
            "several)"
        },
    )
    examples: int = field(default=3, metadata={"help": "held-out prompts shown with each policy's completion"})


def parsers() -> dict:
    return {
        "": make_parser(
            ReportArguments,
            prog="cringe report",
            description=(
                "A report for one `cringe iterate` run directory or several side by side (runs of different losses on "
                "the same prompts): per-round evaluation with intervals, the reward-KL curve, win rate by round, example "
                "completions and each run's configuration, as report.md and one self-contained report.html."
            ),
        )
    }


def main(argv: list[str]) -> Path:
    """`cringe report`: leading positional arguments are run directories."""
    positional = []
    while argv and not argv[0].startswith("-"):
        positional.append(argv.pop(0))
    (args,) = parse(parsers()[""], list(argv), 1)
    runs = positional + list(args.runs)
    if not runs:
        raise UserError("give at least one run directory: cringe report RUN [RUN ...]")
    if args.output_dir is None and len(runs) > 1:
        raise UserError("several runs: say where the report goes with --output_dir DIR")
    out = Path(args.output_dir) if args.output_dir else Path(runs[0]) / "report"
    from cringe.report import write_run_report  # imports torch, which `cringe report --help` does without

    page = write_run_report(runs, out, examples=args.examples)
    print(f"report: {out / 'report.md'}, {page}")
    return page
