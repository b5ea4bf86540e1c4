"""How long `cringe iterate` takes to stop after SIGTERM arrives mid-training.

    python bench/stop_latency.py [--config examples/iterate_smollm2.yaml] [--tries 3]

The loop's handler (cringe.durable.interrupt) raises in the main thread, and Python runs a signal handler only between
bytecodes: inside one long C++ call (the autograd engine's backward through the model body) it waits for the call
to return. So the bound is the longest stretch of C++ in a step, not the step. This script starts the example,
waits until training has logged its first loss, sends SIGTERM at a different offset into the following steps on
each try, and reports the seconds until the process exited (and its exit status: 143 is the clean stop). Each try
starts a fresh run directory (sampling first, about 30 s for the example).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_try(config: str, output_dir: str, offset: float) -> dict:
    command = [
        sys.executable,
        "-m",
        "cringe",
        "iterate",
        "--config",
        config,
        "--output_dir",
        output_dir,
        "--train.logging_steps",
        "1",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the Trainer prints each logged loss as a dict on its own line
        if "'loss'" in line:
            break
    else:
        raise RuntimeError("the run ended before training logged a loss")
    time.sleep(offset)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    status = proc.wait()
    return {"offset_s": offset, "stop_s": time.perf_counter() - sent, "exit": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/iterate_smollm2.yaml")
    parser.add_argument("--tries", type=int, default=3)
    a = parser.parse_args()
    rows = [one_try(a.config, tempfile.mkdtemp(prefix="cringe-stop-"), offset=1.3 * i) for i in range(a.tries)]
    print(f"{platform.machine()}, {os.cpu_count()} cores; `python bench/stop_latency.py --config {a.config}`\n")
    print("| try | SIGTERM sent after the first logged loss + s | seconds to exit | exit status |\n|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['offset_s']:.1f} | {r['stop_s']:.1f} | {r['exit']} |")


if __name__ == "__main__":
    main()
