"""`cringe` command line: one module per verb (its arguments and its `main` together), one dataclass-driven
parser for all of them (cringe.config).

    cringe train --config run.yaml [--key value ...]      fine-tune on preference, binary or SFT data
    cringe iterate --config iter.yaml [--key value ...]   iterative rounds (dotted keys: --train.learning_rate 1e-5)
    cringe iterate --config recipes/NAME.yaml --dry-run   check a recipe offline (docs/scale.md)
    cringe sample --model M --prompts FILE --output samples.jsonl [--n 4 --backend vllm --vllm.KEY VALUE]
    cringe score --samples samples.jsonl --reward reward.yaml --output scores.jsonl
    cringe evaluate --policy DIR --baseline DIR --prompts FILE --reward reward.yaml
    cringe evaluate --policy DIR --baseline outputs.json --reward judge.yaml [--export_outputs FILE]
    cringe report RUN [RUN ...] [--output_dir DIR]        a report (markdown + HTML) for iterate runs, side by side
    cringe demo [--quick] [--output_dir DIR]              the paper's comparison, offline, on a CPU
    cringe env                                            versions and devices, for bug reports
    cringe --version

Every verb takes `--help`, `--config FILE` (YAML with the flags' names as keys; flags override it) and both
spellings of every flag (`--output_dir`, `--output-dir`). A user error (missing file, bad data row, unknown
option) prints one line and exits with status 2; `--debug` (or CRINGE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys

import cringe
from cringe.durable.interrupt import Interrupted
from cringe.errors import UserError

# verb -> its module, imported only when the verb runs: nothing here imports torch, so `cringe --help` answers
# without it (tests/test_cli.py checks; a verb's own --help costs what its flags' dataclasses import).
VERBS = {
    verb: f"cringe.cli.{verb}" for verb in ("train", "iterate", "sample", "score", "evaluate", "report", "demo", "env")
}
HELP_FLAGS = {"-h", "--help"}


def verb_module(verb: str):
    return importlib.import_module(VERBS[verb])


def verb_parsers() -> dict:
    """verb -> {"": its parser, section name -> that section's parser}: the parsers the verbs parse with, for the
    generated reference (so the reference cannot drift from the flags)."""
    return {verb: verb_module(verb).parsers() for verb in VERBS}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CRINGE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in HELP_FLAGS:
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(f"cringe {cringe.__version__}")
        return
    verb = argv[0]
    if verb not in VERBS:
        close = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"cringe: error: unknown command {verb!r}{hint}; commands: {', '.join(VERBS)}", file=sys.stderr)
        sys.exit(2)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not HELP_FLAGS.intersection(argv[1:]):
        # Before the verb's module is imported and any torch work, so the CPU thread pool starts with it: every
        # verb, stage subprocess and `accelerate launch` rank comes through here. Not for --help, which computes
        # nothing and should not pay for importing torch.
        from cringe.denormals import flush_denormals

        flush_denormals()
    try:
        verb_module(verb).main(argv[1:])
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_initialized():
            # a verb under `accelerate launch`; cringe.loop.processes.end_distributed says why. Checked here first:
            # importing cringe.loop costs seconds, and a verb without a group should not pay them on its way out.
            from cringe.loop.processes import end_distributed

            end_distributed()
    except UserError as err:
        if debug:
            raise
        print(f"cringe {verb}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        # SIGTERM / SIGINT (cringe.durable.interrupt): what is on disk is complete; the shell's status for the
        # signal.
        if debug:
            raise
        print(f"cringe {verb}: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
