"""Flush denormal (subnormal) floats to zero on the CPU, in every thread that computes.

Why: once a model grows confident on its data, a share of what a training step computes falls below float32's
smallest normal number (~1.2e-38), and Intel cores handle subnormal operands in microcode, many times slower
(AMD Zen 3 cores do not). The measurements (the share, the slowdown, a training run with and without flushing)
are in docs/performance.md, "Which CPU decides two defaults". The values flushed are below anything a loss or
gradient here can resolve; `tests/test_denormals.py` checks the losses and gradients to tolerance.

`torch.set_flush_denormal` sets the FTZ/DAZ bits of the calling thread only. Threads created later inherit
them (Linux copies the floating-point environment into a new thread), but torch's OpenMP pool may already
exist: a user's script ran a parallel op, or `torch.set_num_threads` started it. So `flush_denormals` also runs
one OpenMP parallel region through torch's own libgomp in which every worker sets its bits, and then probes:
subnormal inputs on all threads must read as zero. Where torch is built on another OpenMP (conda's Intel
runtime, macOS's libomp) the workers keep their setting unless flushing came first, and the probe says so.

On by default wherever the library computes (the CLI's every verb, hence every stage subprocess and every
`accelerate launch` rank; `CringeTrainer`, the samplers, reward models, the KL passes for Python callers).
`CRINGE_FLUSH_DENORMAL=0` turns it off, for every process a run starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

ENV = "CRINGE_FLUSH_DENORMAL"
_SUBNORMAL = 1e-39  # below float32's smallest normal number (1.18e-38)
_state: dict = {}


def wanted() -> bool:
    """Whether flushing is asked for: on unless CRINGE_FLUSH_DENORMAL is 0/false/no/off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _each_openmp_thread(fn) -> bool:
    """Run fn() once in every thread of torch's OpenMP pool (and the calling thread), through the libgomp that
    torch loaded. False where torch has no libgomp of its own (its pool then cannot be reached from Python)."""
    gomp_path = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not gomp_path.exists() or "OpenMP" not in torch.__config__.parallel_info():
        return False
    gomp = ctypes.CDLL(str(gomp_path))  # the copy already loaded: same path, same handle, same pool
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    callback = callback_type(lambda _data: fn())
    gomp.GOMP_parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.GOMP_parallel.restype = None
    gomp.GOMP_parallel(callback, None, torch.get_num_threads(), 0)
    return True


def denormals_flushed() -> bool:
    """Probe: do subnormal float32 inputs read as zero in every intra-op thread? (A tensor large enough that
    torch splits the multiplication over all its threads; each thread's share is checked.)"""
    threads = torch.get_num_threads()
    x = torch.full((max(threads, 1) * 65536,), _SUBNORMAL, dtype=torch.float32)
    return bool(((x * 1.0) == 0).all())


def flush_denormals(enabled: bool | None = None) -> bool:
    """Set flushing on (or off) in this thread and in torch's CPU thread pool; returns whether every thread now
    flushes. enabled None: as CRINGE_FLUSH_DENORMAL says (on by default). Cheap after the first call."""
    enabled = wanted() if enabled is None else enabled
    key = (enabled, torch.get_num_threads())
    if _state.get("key") == key:
        return _state["flushed"]
    if not torch.set_flush_denormal(enabled) and enabled:  # this CPU has no FTZ/DAZ (not x86 with SSE3)
        _state.update(key=key, flushed=False)
        logger.info("this CPU cannot flush denormal floats; CPU steps may slow down once the model is confident")
        return False
    _each_openmp_thread(lambda: torch.set_flush_denormal(enabled))
    flushed = denormals_flushed()
    if enabled and not flushed:
        logger.warning(
            "denormal floats are flushed in the main thread only (torch's thread pool started before "
            "and is not libgomp); import cringe and call cringe.denormals.flush_denormals() before "
            "the first torch operation, or CPU steps may slow down 10x once the model is confident"
        )
    _state.update(key=key, flushed=flushed)
    return flushed


def describe() -> str:
    """One line for `cringe env` and bug reports."""
    if not wanted():
        return f"off ({ENV}=0)"
    if flush_denormals():
        return f"flushed to zero on all {torch.get_num_threads()} CPU threads ({ENV}=0 turns it off)"
    return "not flushed (this CPU or this torch build does not allow it)"
