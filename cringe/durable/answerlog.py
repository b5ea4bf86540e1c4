"""Answers an LLM judge already gave, kept on disk as they arrive, so a scoring step that stops midway (the
server died, the run was interrupted) resumes by asking only for the answers it does not have.

The log is a JSONL file beside the step's output (`round-k/.scores-partial.jsonl` for `scores.jsonl`), one
`{"key", "answer"}` line per request, appended and fsynced one line at a time. The key is a hash of the whole
request (model, settings, messages), so a changed judge or template never reuses an old answer. A process that
dies mid-append leaves a torn last line: it is dropped when the log is read back. The log is removed once the
step's output is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from cringe.durable.files import DiskFullError, is_disk_full

logger = logging.getLogger(__name__)


def request_key(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def partial_path(out_path: Path | str) -> Path:
    """Where the answers for `out_path` are kept while it is being computed."""
    out_path = Path(out_path)
    return out_path.parent / f".{out_path.stem}-partial.jsonl"


class AnswerLog:
    """A dict of answers backed by an append-only, fsynced JSONL file; safe to add to from several threads."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = None
        self.answers: dict[str, str] = self._load()
        self.loaded = len(self.answers)

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A torn last line: drop it from the file too, so the next append starts on a line of its own.
            logger.warning("%s: dropping a torn last line (the writer stopped midway)", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(end)
        answers = {}
        for line_no, line in enumerate(data[:end].splitlines(), start=1):
            try:
                row = json.loads(line)
                answers[row["key"]] = row["answer"]
            except (ValueError, KeyError, TypeError):
                # A cache entry, not a result: losing it only costs asking that request again.
                logger.warning("%s: line %d is damaged; that answer will be asked for again", self.path, line_no)
        return answers

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def add(self, key: str, answer: str) -> None:
        line = json.dumps({"key": key, "answer": answer}) + "\n"
        with self._lock:
            try:
                if self._file is None:
                    self._file = open(self.path, "a", encoding="utf-8")
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as err:
                if is_disk_full(err):
                    raise DiskFullError(self.path) from err
                raise
            self.answers[key] = answer

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@contextlib.contextmanager
def answers_kept(reward, out_path: Path | str):
    """Around computing `out_path` with `reward`: a reward source that can keep its answers (one with a
    `keep_answers(path)` context, the LLM judge) keeps them in partial_path(out_path). When the block ends with
    out_path written, the partial log has served its purpose and is removed."""
    keep = getattr(reward, "keep_answers", None)
    if keep is None:
        yield
        return
    partial = partial_path(out_path)
    with keep(partial):
        yield
    if Path(out_path).exists():
        partial.unlink(missing_ok=True)
