"""`cringe iterate`: iterative preference training, sample -> score -> pair -> train -> evaluate, round after round
(resumable). Its arguments are cringe.loop.config.IterateConfig, which the demo and Python callers share."""

from __future__ import annotations

import sys
from pathlib import Path

from cringe.loop.config import iterate_parser, parse_iterate_args, section_parsers

DRY_RUN_FLAGS = ("--dry-run", "--dry_run")


def command_parser():
    """IterateConfig's parser plus the flags of the command alone (not keys of a config: a run has no use for them)."""
    parser = iterate_parser()
    parser.add_argument(
        *DRY_RUN_FLAGS,
        action="store_true",
        help="check the config offline and print what the run would do, then stop: every key typed and checked, "
        "the reward sources and the accelerate config file too; no model or data is loaded (command line only)",
    )
    return parser


def parsers() -> dict:
    return {"": command_parser(), **{name: p for name, p in section_parsers().items() if p is not None}}


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        command_parser().print_help()
        sys.exit(0)
    # Imported here: the run, the report and the recipes check are more than --help needs.
    from cringe.loop.run import IterativeRun, evaluation_table
    from cringe.recipes import dry_run
    from cringe.report import write_run_report

    if any(a in DRY_RUN_FLAGS for a in argv):  # before parse_iterate_args: IterateConfig has no dry_run key
        print(dry_run([a for a in argv if a not in DRY_RUN_FLAGS]))
        return
    config = parse_iterate_args(argv)
    evaluations = IterativeRun(config).run()
    if evaluations:
        print("\n" + evaluation_table(evaluations))
    page = write_run_report([config.output_dir], Path(config.output_dir) / "report")
    print(f"\nreport: {page} (and report.md beside it; `cringe report` redraws it)")
