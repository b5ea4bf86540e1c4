"""Hardening the iterative run (issue 14): each fault is injected for real and the run must stop with one clear
line, keep only complete files, and resume to exactly what an uninterrupted run produces.

Faults: a second process on the same run directory, SIGINT / SIGTERM mid-step, damaged files (state.json, a
scores line, a sampling shard, a model folder), a full disk (a JSONL write, a model save), an LLM judge server
that dies mid-round, a nan loss; and the loading policy (no remote code, safetensors only, no pickle).
"""

import ast
import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tokenize
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cringe.cli import main
from cringe.loop.run import IterativeRun, load_config
from cringe.testbeds.toy import prompts as toy_prompts
from cringe.testbeds.toy import vowel_share

from .conftest import pair_rows
from .test_loop import write_config as loop_config

ROOT = Path(__file__).resolve().parents[1]
GATE = "CRINGE_TEST_GATE"


def gated_vowel_share(prompts, completions):
    """The toy reward. With $CRINGE_TEST_GATE naming a folder, it first leaves a file `waiting` there and blocks
    until a file `open` appears: a run held at a known point (round 1's scoring step) for as long as a test
    needs."""
    gate = os.environ.get(GATE)
    if gate:
        Path(gate, "waiting").write_text(str(os.getpid()))
        deadline = time.time() + 120
        while not Path(gate, "open").exists() and time.time() < deadline:
            time.sleep(0.05)
    return vowel_share(prompts, completions)


# ----- a small run, its uninterrupted reference, and the comparison ----------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("hardening")
    (path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(4)))
    return path


def write_config(base: Path, out: Path, **overrides) -> Path:
    """tests/test_loop.py's config on this module's 4 prompts, with a judge that can be held, checkpoints every
    epoch (the loop's default), so an interrupted training resumes from one."""
    train = {
        "per_device_train_batch_size": 2,
        "num_train_epochs": 2,
        "learning_rate": 3e-3,
        "use_cpu": True,
        "disable_tqdm": True,
        "save_strategy": "epoch",
        "logging_steps": 1,
    }
    defaults = {
        "prompts": str(base / "prompts.jsonl"),
        "eval_prompts": str(base / "prompts.jsonl"),
        "max_eval_prompts": 2,
        "reward": {"type": "callable", "function": "tests.test_hardening:gated_vowel_share"},
        "sampling": {"n": 4, "max_new_tokens": 8, "batch_size": 16},
        "train": train,
    }
    return loop_config(base, out, **{**defaults, **overrides})


@pytest.fixture(scope="module")
def reference(base):
    """The uninterrupted run every faulty one must end equal to."""
    out = base / "reference"
    IterativeRun(load_config(str(write_config(base, out)), [])).run()
    return out


COMPARED = ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "eval.json")


def assert_same_as(reference: Path, out: Path, rounds: int = 2):
    for k in range(1, rounds + 1):
        for name in COMPARED:
            assert (out / f"round-{k}" / name).read_text() == (reference / f"round-{k}" / name).read_text(), (
                f"round-{k}/{name}"
            )
        assert (out / f"round-{k}" / "model" / "model.safetensors").exists()
    assert json.loads((out / "state.json").read_text())["finished_rounds"] == rounds
    assert leftovers(out) == []


def leftovers(out: Path) -> list[str]:
    """Temporary files and folders that must not outlive a run (shard folders may: they are resumable)."""
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if ".tmp-" in p.name or p.name == ".model.tmp" or p.name.endswith("-partial.jsonl")
    )


def cli(config: Path, capsys) -> tuple[int, str]:
    """`cringe iterate --config FILE` in this process: (exit status, the last line on stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["iterate", "--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert sum(line.startswith("cringe iterate: ") for line in err) == 1, err
    return exit_info.value.code, err[-1]


def cringe_process(config: Path, **env) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "cringe", "iterate", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120):
    deadline = time.time() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"the process ended ({proc.returncode}) before {path.name} appeared: {proc.stderr.read()[-2000:]}"
            )
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ----- 1 and 2: one process per run directory; SIGINT and SIGTERM ------------------------------------------------


def test_a_second_process_is_refused_and_sigint_stops_the_first_which_then_resumes(base, reference, tmp_path):
    out = base / "locked"
    config = write_config(base, out, rounds=1)  # round 1 of the reference: `rounds` changes no result
    gate = tmp_path / "gate"
    gate.mkdir()
    first = cringe_process(config, **{GATE: str(gate)})
    try:
        wait_for(gate / "waiting", first)  # the first holds the run and is in round 1's scoring step
        second = subprocess.run(
            [sys.executable, "-m", "cringe", "iterate", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(
            f"cringe iterate: error: {out} is in use by process {first.pid} on {socket.gethostname()} "
        ), line

        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "cringe iterate: interrupted by SIGINT; rerun the same command to resume"
    assert "Traceback" not in err
    assert (out / "round-1" / "samples.jsonl").exists() and not (out / "round-1" / "scores.jsonl").exists()
    assert leftovers(out) == []

    IterativeRun(load_config(str(config), [])).run()  # the lock was released: the rerun resumes
    assert_same_as(reference, out, rounds=1)


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    from cringe.durable.runlock import RunLock, RunLockedError

    code = (
        "import sys, time\nfrom cringe.durable.runlock import RunLock\n"
        f"RunLock({str(tmp_path)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no chance to clean up, the lock file keeps its pid
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} "):
            RunLock(tmp_path).acquire()  # held, even against this same process
    with RunLock(tmp_path):  # released on exit
        pass


def test_sigterm_mid_training_step_then_resume_equals_the_uninterrupted_run(base, reference, capsys, monkeypatch):
    from cringe.trainer import CringeTrainer

    out = base / "terminated"
    config = write_config(base, out)
    compute_loss = CringeTrainer.compute_loss
    sent = []

    def terminated_after_forward(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        # Round 2, once its first epoch's checkpoint exists: between this step's forward and its backward.
        if (
            "round-2" in self.args.output_dir
            and self.model.training
            and not sent
            and list(Path(self.args.output_dir).glob("checkpoint-*"))
        ):
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # else it would end pytest
            sent.append(self.state.global_step)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(CringeTrainer, "compute_loss", terminated_after_forward)
    handler_before = signal.getsignal(signal.SIGTERM)
    assert cli(config, capsys) == (143, "cringe iterate: interrupted by SIGTERM; rerun the same command to resume")
    assert sent and (out / "round-1" / "model").exists() and not (out / "round-2" / "model").exists()
    assert list((out / "round-2" / "checkpoints").glob("checkpoint-*"))
    assert leftovers(out) == []
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the run's handler is gone with it

    monkeypatch.undo()
    IterativeRun(load_config(str(config), [])).run()
    assert_same_as(reference, out)
    steps = [s["step"] for s in json.loads((out / "state.json").read_text())["steps"]]
    assert steps.count("model") == 2  # each round trained once to completion


# ----- 3: damaged files ------------------------------------------------------------------------------------------


def copy_run(reference: Path, out: Path) -> None:
    shutil.copytree(reference, out)


def test_a_damaged_state_json_is_named(base, reference, capsys):
    out = base / "bad-state"
    copy_run(reference, out)
    config = write_config(base, out)
    (out / "state.json").write_text('{"config": {"rounds": 2},')
    code, line = cli(config, capsys)
    assert code == 2 and line.startswith(f"cringe iterate: error: {out / 'state.json'}: not valid JSON"), line
    (out / "state.json").write_text('{"config": {"rounds": 2}}')  # valid JSON, hand-edited: no hash
    code, line = cli(config, capsys)
    assert code == 2 and line.startswith(f"cringe iterate: error: {out / 'state.json'}: no 'hash' string"), line


def test_a_damaged_scores_file_is_named_never_paired(base, reference, capsys):
    out = base / "bad-scores"
    copy_run(reference, out)
    config = write_config(base, out)
    round2 = out / "round-2"
    for name in ("pairs.jsonl", "pairing.json", "model", "eval_samples.jsonl", "eval_scores.jsonl", "eval.json"):
        shutil.rmtree(round2 / name) if (round2 / name).is_dir() else (round2 / name).unlink()
    lines = (round2 / "scores.jsonl").read_text().splitlines(keepends=True)
    (round2 / "scores.jsonl").write_text("".join(lines[:2]) + '{"prompt_id": 0, "sc\n' + "".join(lines[3:]))
    code, line = cli(config, capsys)
    assert code == 2 and line.startswith(
        f"cringe iterate: error: {round2 / 'scores.jsonl'}: line 3 is not valid JSON"
    ), line
    # Cut at a line boundary: every line parses, one score is missing.
    (round2 / "scores.jsonl").write_text("".join(lines[:-1]))
    code, line = cli(config, capsys)
    assert code == 2 and line.startswith(
        f"cringe iterate: error: {round2 / 'scores.jsonl'}: {len(lines) - 1} "
        f"scores do not match the {len(lines)} samples"
    ), line
    assert not (round2 / "pairs.jsonl").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_model_folder_without_whole_weights_is_named(base, reference, capsys, damage):
    out = base / f"bad-model-{damage}"
    copy_run(reference, out)
    config = write_config(base, out)
    weights = out / "round-1" / "model" / "model.safetensors"
    if damage == "missing":
        weights.unlink()
        expected = f"{weights.parent}: no weights (no *.safetensors file); delete {weights.parent} and rerun"
    else:
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        expected = f"{weights}: truncated safetensors file"
    code, line = cli(config, capsys)
    assert code == 2 and line.startswith(f"cringe iterate: error: {expected}"), line


def test_a_damaged_sampling_shard_is_sampled_again(base, reference, caplog):
    out = base / "bad-shard"
    config = write_config(base, out, rounds=1)
    shards = out / "round-1" / ".samples-shards"  # as a killed sampling step leaves them, one shard since cut
    shards.mkdir(parents=True)
    text = (reference / "round-1" / "samples.jsonl").read_text()
    (shards / "shard-0000000.jsonl").write_text(text[: len(text) // 2])
    IterativeRun(load_config(str(config), [])).run()
    assert "shard-0000000.jsonl is damaged" in caplog.text
    assert_same_as(reference, out, rounds=1)


def test_a_shard_cut_at_a_line_boundary_is_incomplete(tmp_path):
    from cringe.durable.integrity import shard_is_complete

    shard = tmp_path / "shard-0000000.jsonl"
    shard.write_text('{"a": 1}\n{"a": 2}\n')
    assert shard_is_complete(shard, 2)
    assert not shard_is_complete(shard, 3)  # valid JSON, a row short
    shard.write_text('{"a": 1}\n{"a": 2}')
    assert not shard_is_complete(shard, 2)  # no final newline: cut


def test_an_interrupted_checkpoint_is_not_resumed_from(tmp_path):
    from cringe.durable.integrity import last_complete_checkpoint

    for step in (9, 10, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (9, 10):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # numeric order; 12 unfinished
    assert not (tmp_path / "checkpoint-12").exists()


# ----- 4: a full disk -------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="names written files through /proc")
def test_a_full_disk_stops_the_run_and_it_resumes_once_space_is_freed(base, reference, capsys, monkeypatch):
    import transformers.modeling_utils

    out = base / "full-disk"
    config = write_config(base, out, rounds=1)
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = "no space left on device; free some space and rerun the same command (complete files are kept)"

    # First a JSONL write: the fsync of scores.jsonl's temporary file.
    fsync = os.fsync

    def full_for_scores(fd):
        if "/round-1/.scores.jsonl.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise enospc
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_scores)
    assert cli(config, capsys) == (2, f"cringe iterate: error: {out / 'round-1' / 'scores.jsonl'}: {message}")
    assert not (out / "round-1" / "scores.jsonl").exists() and leftovers(out) == []
    assert (out / "round-1" / "samples.jsonl").read_text() == (reference / "round-1" / "samples.jsonl").read_text()
    monkeypatch.undo()

    # Then the model save after training (the checkpoints before it fit).
    save_file = transformers.modeling_utils.safe_save_file

    def full_for_the_model(tensors, filename, *args, **kwargs):
        if ".model.tmp" in str(filename):
            raise enospc
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_for_the_model)
    assert cli(config, capsys) == (2, f"cringe iterate: error: {out / 'round-1' / 'model'}: {message}")
    assert not (out / "round-1" / "model").exists() and leftovers(out) == []
    assert list((out / "round-1" / "checkpoints").glob("checkpoint-*"))  # kept: the rerun does not train again
    monkeypatch.undo()

    IterativeRun(load_config(str(config), [])).run()
    assert_same_as(reference, out, rounds=1)
    steps = [s["step"] for s in json.loads((out / "state.json").read_text())["steps"]]
    assert steps == ["samples.jsonl", "scores.jsonl", "pairs.jsonl", "model", "eval.json"]  # each once


def test_disk_full_is_recognised_in_the_forms_libraries_raise():
    from cringe.durable.files import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # safetensors raises its own exception type with the OS message inside
    assert is_disk_full(
        RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
    )
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


# ----- 5: an LLM judge server that dies mid-round -------------------------------------------------------------------


class JudgeServer:
    """An OpenAI-compatible judge on 127.0.0.1 that prefers the response with more vowels, answers `limit`
    requests, then dies: it drops the connection of the next request and stops listening."""

    def __init__(self, limit: int | None = None, port: int = 0):
        self.limit, self.answered, self.dead = limit, 0, False
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    if outer.limit is not None and outer.answered >= outer.limit and not outer.dead:
                        outer.dead = True
                        threading.Thread(target=outer.stop, daemon=True).start()
                    if outer.dead:
                        self.close_connection = True
                        return  # no reply: the client sees the connection dropped
                    outer.answered += 1
                content = body["messages"][0]["content"]
                a = content.split("Response A:\n")[1].split("\n\nResponse B:\n")[0]
                b = content.split("\n\nResponse B:\n")[1].split("\n\nAnswer with")[0]
                answer = "A" if vowel_share([], [a]) >= vowel_share([], [b]) else "B"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_judge_that_dies_mid_round_keeps_its_answers_and_the_rerun_asks_only_the_missing(base, capsys):
    from cringe.rewards import PairwiseJudge

    out = base / "judge"
    dying = JudgeServer(limit=20)
    judge = {
        "type": "judge",
        "base_url": dying.url,
        "model": "test-judge",
        "concurrency": 2,
        "max_retries": 1,
        "backoff": 0.01,
        "timeout": 2,
    }
    config = write_config(base, out, rounds=1, eval_prompts=None, max_prompts=3, reward=judge)
    code, line = cli(config, capsys)
    partial = out / "round-1" / ".scores-partial.jsonl"
    assert code == 2 and line.startswith(f"cringe iterate: error: the judge at {dying.url}/chat/completions failed "), (
        line
    )
    assert f"the 20 answers received are kept in {partial}; rerun the same command once it answers again" in line
    assert dying.answered == 20 and len(partial.read_text().splitlines()) == 20
    assert (out / "round-1" / "samples.jsonl").exists() and not (out / "round-1" / "scores.jsonl").exists()

    back = JudgeServer(port=dying.port)  # the same server back (the URL is part of the run's configuration)
    try:
        IterativeRun(load_config(str(config), [])).run()
    finally:
        back.stop()
    assert not partial.exists() and (out / "round-1" / "model").exists()

    # The uninterrupted reference: the same samples scored in one go by a judge that never dies.
    samples = [json.loads(s) for s in (out / "round-1" / "samples.jsonl").read_text().splitlines()]
    whole = JudgeServer()
    try:
        scores = PairwiseJudge(whole.url, "test-judge", concurrency=2).score(
            [s["prompt"] for s in samples], [s["completion"] for s in samples]
        )
    finally:
        whole.stop()
    assert whole.answered == 3 * 6 * 2  # 3 prompts, 6 pairs of 4 samples each, both orders
    assert back.answered == whole.answered - 20  # only the missing ones were asked
    kept = [json.loads(s)["score"] for s in (out / "round-1" / "scores.jsonl").read_text().splitlines()]
    assert kept == scores


def test_the_answer_log_drops_a_torn_last_line(tmp_path):
    from cringe.durable.answerlog import AnswerLog

    path = tmp_path / ".scores-partial.jsonl"
    path.write_text('{"key": "k1", "answer": "A"}\n{"key": "k2", "ans')  # the writer died mid-line
    log = AnswerLog(path)
    assert log.answers == {"k1": "A"}
    log.add("k3", "B")
    log.close()
    assert AnswerLog(path).answers == {"k1": "A", "k3": "B"}


# ----- 6: nan loss -----------------------------------------------------------------------------------------------


def nan_at(step: int):
    """A compute_loss that returns nan on optimiser step `step` (1-based)."""
    from cringe.trainer import CringeTrainer

    compute_loss = CringeTrainer.compute_loss

    def patched(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training and self.state.global_step == step - 1:
            loss = loss * float("nan")
        return loss

    return patched


def test_a_nan_loss_stops_training_at_its_step(tmp_path, tokenizer, tiny_model, monkeypatch):
    from cringe.trainer import CringeConfig, CringeTrainer, NonFiniteLossError

    args = CringeConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=6,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    monkeypatch.setattr(CringeTrainer, "compute_loss", nan_at(3))
    trainer = CringeTrainer(model=tiny_model, args=args, train_dataset=pair_rows(12), processing_class=tokenizer)
    with pytest.raises(
        NonFiniteLossError,
        match=r"^training loss is nan at step 3: training diverged; lower the "
        r"learning rate",
    ):
        trainer.train()
    assert trainer.state.global_step == 2  # the nan step never reached the optimiser


def test_diverged_weights_are_never_kept(tmp_path, tokenizer, tiny_model):
    from cringe.trainer import CringeConfig, CringeTrainer, NonFiniteLossError

    # A learning rate no float32 weight survives: the first update makes them inf, the next loss nan.
    args = CringeConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e39,
        max_grad_norm=0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        loss="sft",
    )
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pair_rows(8)]
    trainer = CringeTrainer(model=tiny_model, args=args, train_dataset=rows, processing_class=tokenizer)
    with pytest.raises(NonFiniteLossError, match=r"nan|inf"):
        trainer.train()


def test_a_nan_loss_in_the_loop_leaves_no_model(base, capsys, monkeypatch):
    from cringe.trainer import CringeTrainer

    out = base / "nan"
    config = write_config(
        base,
        out,
        rounds=1,
        eval_prompts=None,
        train={
            "per_device_train_batch_size": 2,
            "num_train_epochs": 2,
            "learning_rate": 3e-3,
            "use_cpu": True,
            "disable_tqdm": True,
            "save_strategy": "no",
        },
    )
    monkeypatch.setattr(CringeTrainer, "compute_loss", nan_at(2))
    code, line = cli(config, capsys)
    assert code == 2 and line.startswith(
        "cringe iterate: error: training loss is nan at step 2: training diverged; lower the learning rate"
    ), line
    assert not (out / "round-1" / "model").exists() and leftovers(out) == []


# ----- 7: loading policy ------------------------------------------------------------------------------------------


def test_models_load_without_remote_code_and_from_safetensors_only(tmp_path, monkeypatch):
    import transformers

    from cringe.errors import UserError
    from cringe.models import load_model, load_tokenizer

    calls = {}

    def record(name, result):
        def from_pretrained(path, *args, **kwargs):
            calls[name] = kwargs
            return result

        return from_pretrained

    class Loaded:
        pad_token = "<pad>"

        def to(self, device):
            return self

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record("model", Loaded()))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer", Loaded()))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    load_model(str(folder))
    load_tokenizer(str(folder))
    assert calls["model"]["trust_remote_code"] is False and calls["model"]["use_safetensors"] is True
    assert calls["tokenizer"]["trust_remote_code"] is False

    calls.clear()
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(
        UserError,
        match=r"model: weights only as pickle files \(pytorch_model.bin\); cringe loads "
        r"safetensors only",
    ):
        load_model(str(folder))
    assert calls == {}  # refused before transformers saw it


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def code_names(path: Path) -> set[str]:
    """The names a file's code uses (not its strings or comments, where "no pickle" may well be written)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def keywords(call: ast.Call) -> dict:
    return {k.arg: k.value.value if isinstance(k.value, ast.Constant) else k.value for k in call.keywords}


def test_the_package_never_unpickles():
    package = ROOT / "cringe"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(ROOT)
        offenders += [f"{where}: uses {name}" for name in sorted(code_names(path) & PICKLE_MODULES)]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = ast.unparse(node.func.value)
            kw = keywords(node)
            if node.func.attr == "load" and owner == "torch" and kw.get("weights_only") is not True:
                offenders.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if node.func.attr == "load" and owner in ("np", "numpy") and kw.get("allow_pickle") is not False:
                offenders.append(f"{where}:{node.lineno}: np.load without allow_pickle=False")
            if (
                node.func.attr == "from_pretrained"
                and owner.startswith("AutoModel")
                and "gguf_file" not in kw
                and kw.get("use_safetensors") is not True
            ):
                offenders.append(f"{where}:{node.lineno}: {owner}.from_pretrained without use_safetensors=True")
            if kw.get("trust_remote_code") is True:
                offenders.append(f"{where}:{node.lineno}: trust_remote_code=True")
    assert offenders == []


def test_the_source_check_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text('import pickle  # "no pickle" in a comment does not count\nx = "joblib"\n')
    assert code_names(bad) & PICKLE_MODULES == {"pickle"}
    call = ast.parse("torch.load(f, weights_only=True)").body[0].value
    assert keywords(call)["weights_only"] is True
