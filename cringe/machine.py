"""The machine a measurement ran on, as the demo's report and the benchmarks (bench/) name it. Reads no more than
/proc/cpuinfo and the platform until a description asks for torch."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpuinfo(field: str) -> str:
    """The first value /proc/cpuinfo gives `field` ("model name", "flags"); "" where the file or the field is not
    there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(field)), "")


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor"), or what the platform says where Linux does not."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_label() -> str:
    """The CPU family in benchmark result file names (bench/results/*-<date>-xeon.md): xeon, epyc, or cpu."""
    model = cpu_model().lower()
    return "xeon" if "xeon" in model else "epyc" if "epyc" in model else "cpu"


def machine_description() -> str:
    import torch

    memory = ""
    try:
        with open("/proc/meminfo") as f:
            memory = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores{memory}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
