"""Files that are either complete or absent: atomic writes (temporary name, fsync, rename) and JSON/JSONL.

Every file the loop, the demo and the stage verbs write goes through here, so "the file exists" always means
"the file is complete", which is what resume relies on. Reading a damaged file raises `DamagedFileError`, which
names the file and the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError


class DamagedFileError(UserError):
    """A file in a run directory that exists but cannot be read back (truncated, hand-edited)."""


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
