"""Files that are either complete or absent: atomic writes (temporary name, fsync, rename) and JSON/JSONL.

Every file the loop, the demo and the stage verbs write goes through here, so "the file exists" always means
"the file is complete", which is what resume relies on. Reading a damaged file raises `DamagedFileError`, which
names the file and the line. A write that finds the disk full raises `DiskFullError`, which names the file:
the previous complete file stays, and rerunning once space is freed picks up from there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

from cringe.errors import UserError


class DamagedFileError(UserError):
    """A file that exists but cannot be read back (truncated, hand-edited, not JSON): a data file or a file in a
    run directory."""


class DiskFullError(UserError):
    """A write failed because the disk (or the user's quota) is full. A user error, not a bug: the message names
    the file, and the run resumes once space is freed."""

    def __init__(self, path: Path | str):
        super().__init__(
            f"{path}: no space left on device; free some space and rerun the same command (complete files are kept)"
        )
        self.filename, self.errno = str(path), errno.ENOSPC


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(err: BaseException | None) -> bool:
    """Whether `err` (or an exception it was raised from) says the disk is full. safetensors reports it as its
    own exception type whose text carries the OS message, so the text counts too."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return True
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def disk_full_reported(where: Path | str):
    """Turn a full disk met anywhere inside (a checkpoint the Trainer writes, a model save) into a DiskFullError
    naming the file when the error names one, else `where`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise DiskFullError(getattr(err, "filename", None) or where) from err


def write_atomic(path: Path | str, text: str) -> None:
    """Write `text` to `path` so that no reader ever sees a partial file, even if this process dies midway."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(path) from err
        raise
    finally:
        # After a failed write (a full disk, an exception) the temporary file must not linger.
        if tmp.exists():
            tmp.unlink()


def write_jsonl(path: Path | str, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_json(path: Path | str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_jsonl(path: Path | str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DamagedFileError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
    return rows


def read_json(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
