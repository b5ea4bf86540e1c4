"""Run one `cringe` stage verb (sample | score) and append the process's peak GPU memory and device to
$CRINGE_PROBE_LOG: the instrument of bench/gpu/gpu_iterate.py and bench/gpu/gpu_recipe.py for stages that run in
processes of their own.

    python bench/gpu/gpu_stage_probe.py sample --config FILE
"""

import json
import os
import sys
from pathlib import Path


def main() -> None:
    import torch

    from cringe.cli import main as cringe_main

    config_path = Path(sys.argv[sys.argv.index("--config") + 1])
    try:
        cringe_main(sys.argv[1:])
    finally:
        on_gpu = torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0
        record = {
            "stage": os.environ.get("CRINGE_PROBE_STAGE", sys.argv[1]),
            "round_dir": config_path.parent.name,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        }
        with open(os.environ["CRINGE_PROBE_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
