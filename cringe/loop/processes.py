"""What a step run in a process of its own needs (cringe.loop.executor): the `accelerate launch` command line, the
launched process's place among its peers, and the error when a child fails."""

from __future__ import annotations

import os
import socket
import sys

from accelerate import PartialState

from cringe.errors import UserError
from cringe.models import resolve_device


def distributed_state(device: str = "auto"):
    """(process index, number of processes, local index, barrier) under `accelerate launch` / torchrun; a single
    process otherwise. A sampling stage launched over N processes splits its shards among them."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 0, lambda: None

    state = PartialState(cpu=resolve_device(device) == "cpu")
    return state.process_index, state.num_processes, state.local_process_index, state.wait_for_everyone


def end_distributed() -> None:
    """Take down this process's torch.distributed group, if it has one, before the interpreter exits. Left to
    interpreter shutdown, a gloo group's threads are destroyed still joinable and a rank aborts ("terminate called
    without an active exception", SIGABRT) after its work is done: 1 run in 4 of a 2-process CPU train did."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class StageFailed(UserError):
    """A step's own process exited with an error; it printed its own message."""


def launch_command(settings: dict, python: str | None = None, module: str = "cringe") -> list[str]:
    """`accelerate launch` with the user's settings ({config_file, num_processes, any other launch flag}), under
    `python` (default: this interpreter), running `module`; the `sample` key is ours (sample data-parallel too)
    and is not passed on. A free local port is picked unless one is given, so two runs on a machine do not
    collide."""
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
    return command + ["-m", module]
