"""One process per run directory: `<run>/.lock`, held with an exclusive `flock` for as long as the run lasts.

Two `cringe iterate` processes on one directory would each resume the same step and rename their files over each
other's. The lock file records the holder's pid and host so the refusal can say who holds it. The kernel drops
an flock when its holder exits, however it exits (SIGKILL and crashes included), so a lock file left behind by a
dead process is stale by construction: the next run takes it over and writes its own pid into it. On a file
system without flock support (some network mounts) the run goes on with a warning rather than not at all.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from cringe.errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLockedError(UserError):
    """Another live process holds the run directory."""


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says (it may be mid-write: then we do not know)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """`with RunLock(run_dir):` holds run_dir exclusively or raises RunLockedError naming the holder's pid."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        if os.environ.get("RANK", "0") != "0":
            return  # one of several ranks of one launch (accelerate, torchrun): rank 0 holds the directory
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            logger.warning("cannot lock %s here: make sure no other process uses this run directory", self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not O_EXCL: the file may be a dead holder's; the flock, not the file's existence, is the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.path.parent} is in use by {_holder(self.path)}: one process per run "
                    f"directory (lock file {self.path}); wait for it to finish or stop it"
                ) from None
            logger.warning(
                "cannot lock %s (%s): make sure no other process uses this run directory",
                self.path,
                os.strerror(err.errno or 0),
            )
            return
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays (empty): unlinking it would let a process that opened it a moment ago lock an inode no
        # longer in the directory while a third creates a new one, and both would think they hold the run.
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
