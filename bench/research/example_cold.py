"""Times an example config the way a newcomer meets it: a fresh `git clone` of this repository's HEAD, an empty
model cache (CRINGE_CACHE), then `python -m cringe iterate --config <example>` in the clone, with this
environment's installed packages. Prints the run's own tables and the wall seconds of the command.

    python bench/research/example_cold.py --config examples/iterate_instructions.yaml

Commit first: uncommitted changes are not in the clone. The clone and the cache are removed afterwards unless
--keep is given."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/iterate_instructions.yaml", help="relative to the repository")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its runs/ directory) and the cache")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="example-cold-"))
    clone, cache = work / "clone", work / "cache"
    cache.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if not (clone / args.config).exists():
        raise SystemExit(f"{args.config}: not in the clone of HEAD ({commit}); commit it first")
    # the clone's code, not the editable install's checkout
    env = {**os.environ, "CRINGE_CACHE": str(cache), "PYTHONPATH": str(clone)}
    print(f"commit {commit}; clone {clone}; empty cache {cache}", flush=True)
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "cringe", "iterate", "--config", args.config], cwd=clone, env=env)
    wall = time.time() - t0
    print(f"EXAMPLE WALL {wall:.0f} s (exit {done.returncode}, commit {commit}, {args.config})", flush=True)
    if not args.keep:
        shutil.rmtree(work)
    raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
