"""A step of the loop in a process of its own: `python -m cringe.loop.child JOB.json`, started by a StageProcess or,
as each rank, by `accelerate launch` (cringe.loop.executor). It reads the job the parent wrote and runs it as the
parent would have in its own process (job.run), so the two cannot compute different things.

Like every `cringe` verb (cringe.cli), it flushes CPU denormals before any torch work, stops at once on SIGTERM /
SIGINT (what exists is complete; the parent's rerun resumes), and prints a user error as one line, exit status 2.
"""

from __future__ import annotations

import logging
import sys

from cringe.denormals import flush_denormals
from cringe.durable.interrupt import Interrupted, signals_interrupt
from cringe.errors import UserError
from cringe.loop.executor import Loaded, read_job
from cringe.loop.processes import end_distributed


def main(argv: list[str]) -> None:
    """Run the job in the file argv[0]; exits with status 2 on a user error, 128 + the signal's number when
    stopped."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flush_denormals()
    try:
        if len(argv) != 1:
            raise UserError("usage: python -m cringe.loop.child JOB.json (a job file the loop wrote)")
        job = read_job(argv[0])
        with signals_interrupt():
            job.run(Loaded())
        end_distributed()
    except UserError as err:
        print(f"cringe: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        print(f"cringe: {err}", file=sys.stderr)
        sys.exit(err.exit_status)


if __name__ == "__main__":
    main(sys.argv[1:])
