"""Atomic files: a write that fails midway leaves the previous file intact and no temporary file behind."""

import os

import pytest

from cringe.durable.files import DamagedFileError, DiskFullError, read_json, read_jsonl, write_json, write_jsonl


def test_round_trip(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"b": [2]}])
    assert read_jsonl(tmp_path / "x.jsonl") == [{"a": 1}, {"b": [2]}]
    write_json(tmp_path / "x.json", {"c": 3})
    assert read_json(tmp_path / "x.json") == {"c": 3}


def test_a_write_that_dies_midway_leaves_the_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "x.jsonl"
    write_jsonl(target, [{"old": 1}])

    # Fail inside the write, after part of the new content reached the disk (as a full disk or a kill would):
    # a plain open(target, "w") would already have truncated the old file.
    def dying_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", dying_fsync)
    with pytest.raises(DiskFullError, match=r"x.jsonl: no space left on device"):
        write_jsonl(target, [{"new": i} for i in range(1000)])
    assert target.read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_a_killed_writer_never_exposes_a_partial_file(tmp_path):
    """A child process is SIGKILLed in the middle of a large atomic write: the target keeps its old content."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "big.jsonl"
    write_jsonl(target, [{"old": True}])
    # The child stops between writing the new bytes and renaming them into place, and is killed there.
    code = (
        "import os, time\nfrom cringe.durable.files import write_atomic\n"
        "def stall(fd):\n    print('writing', flush=True)\n    time.sleep(60)\n"
        "os.fsync = stall\n"
        f"write_atomic({str(target)!r}, 'x' * 10_000_000)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # the new bytes are written, not yet renamed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_jsonl(target) == [{"old": True}]


def test_damaged_files_name_the_file_and_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"score": 1}\n{"score": 2\n')
    with pytest.raises(DamagedFileError, match=r"scores.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(DamagedFileError, match=r"state.json: not valid JSON"):
        read_json(tmp_path / "state.json")
