"""Running a stage in a process of its own: `python -m cringe VERB --config FILE`, or the same under
`accelerate launch` (many processes, one GPU each). The child owns the GPU memory it uses, and it is back when the
child exits: on a GPU the loop samples and scores this way, so training finds the memory free."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from accelerate import PartialState

from cringe.durable.files import write_atomic
from cringe.errors import UserError
from cringe.models import resolve_device

logger = logging.getLogger(__name__)


def distributed_state(device: str = "auto"):
    """(process index, number of processes, local index, barrier) under `accelerate launch` / torchrun; a single
    process otherwise. A sampling stage launched over N processes splits its shards among them."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 0, lambda: None

    state = PartialState(cpu=resolve_device(device) == "cpu")
    return state.process_index, state.num_processes, state.local_process_index, state.wait_for_everyone


class StageFailed(UserError):
    """A stage subprocess (`cringe sample` / `cringe score`) exited with an error; it printed its own message."""


def launch_command(settings: dict, python: str | None = None) -> list[str]:
    """`accelerate launch` with the user's settings ({config_file, num_processes, any other launch flag}), under
    `python` (default: this interpreter); the `sample` key is ours (sample data-parallel too) and is not passed
    on. A free local port is picked unless one is given, so two runs on a machine do not collide."""
    flags = {k: v for k, v in settings.items() if k != "sample"}
    if "main_process_port" not in flags and flags.get("num_machines", 1) in (1, None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            flags["main_process_port"] = s.getsockname()[1]
    command = [python or sys.executable, "-m", "accelerate.commands.launch"]
    for key, value in flags.items():
        if value is None or value is False:
            continue
        command += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return command + ["-m", "cringe"]


def run_stage_process(verb: str, config: dict, out_path: Path, launcher: list[str] | None = None) -> None:
    """Run `python -m cringe VERB --config FILE` (or `LAUNCHER VERB --config FILE`, e.g. under accelerate launch)
    with `config` written to FILE beside out_path, and check that it wrote out_path. The child owns the GPU
    memory it uses; it is back when the child exits."""

    out_path = Path(out_path)
    config_path = out_path.parent / f".{out_path.stem}-{verb}.yaml"

    write_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
    command = (launcher or [sys.executable, "-m", "cringe"]) + [verb, "--config", str(config_path)]
    logger.info("stage process: %s", " ".join(command))
    code = subprocess.run(command, env=dict(os.environ)).returncode
    if code != 0:
        raise StageFailed(
            f"the `cringe {verb}` stage failed (exit status {code}; its message is above); "
            f"its config is {config_path}; rerun to resume"
        )
    if not out_path.exists():
        raise StageFailed(f"the `cringe {verb}` stage exited without writing {out_path}")
    config_path.unlink()
