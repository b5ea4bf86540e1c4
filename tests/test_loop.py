"""The iterative loop: a complete run, resume after SIGKILL equals the uninterrupted run, config checks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cringe.loop.run import IterativeRun, load_config
from cringe.loop.rundir import RunDir
from cringe.testbeds.toy import prompts as toy_prompts


def write_config(tmp_path, out, **overrides):
    """A 2-round iterate config on 12 toy prompts (written to tmp_path/prompts.jsonl unless `prompts` is given)."""
    prompts = tmp_path / "prompts.jsonl"
    if "prompts" not in overrides:
        prompts.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(12)))
    config = {
        "model": "tiny-random-llama",
        "prompts": str(prompts),
        "eval_prompts": str(prompts),
        "output_dir": str(out),
        "rounds": 2,
        "loss": "pairwise_cringe",
        "reward": {"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
        "sampling": {"n": 4, "max_new_tokens": 12, "batch_size": 16},
        "train": {
            "per_device_train_batch_size": 4,
            "num_train_epochs": 2,
            "learning_rate": 3e-3,
            "use_cpu": True,
            "disable_tqdm": True,
            "save_strategy": "no",
            "logging_steps": 1,
        },
    }
    config.update(overrides)
    path = tmp_path / f"{Path(out).name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


ROUND_FILES = ["samples.jsonl", "scores.jsonl", "pairs.jsonl", "pairing.json", "model", "eval.json"]


def assert_complete(out: Path, rounds: int):
    for k in range(1, rounds + 1):
        for name in ROUND_FILES:
            assert (out / f"round-{k}" / name).exists(), f"round-{k}/{name} missing"
        assert (out / f"round-{k}" / "model" / "model.safetensors").exists()
        assert not (out / f"round-{k}" / ".model.tmp").exists()
        assert not list((out / f"round-{k}").glob(".*-shards"))
    state = json.loads((out / "state.json").read_text())
    assert state["finished_rounds"] == rounds


@pytest.mark.parametrize("loss", ["pairwise_cringe", "binary_cringe", "dpo", "sft"])
def test_two_rounds_complete_with_evaluation(tmp_path, loss):
    config = load_config(str(write_config(tmp_path, tmp_path / "run", loss=loss)), [])
    evaluations = IterativeRun(config).run()
    assert_complete(tmp_path / "run", 2)
    assert [e["round"] for e in evaluations] == [1, 2]
    for e in evaluations:
        assert 0 <= e["win_rate"]["win_rate"] <= 1 and e["win_rate"]["n"] == 12 and e["n_prompts"] == 12
        assert e["kl"]["n"] == 12 and e["baseline_reward"]["n"] == 12
        assert {"length_tokens", "distinct_2", "repeated_3gram_rate"} <= set(e["text"])
    card = (tmp_path / "run" / "round-2" / "model" / "README.md").read_text()
    assert f"Loss: `{loss}`" in card and "## Evaluation" in card and "win rate vs M0" in card
    samples = [json.loads(line) for line in (tmp_path / "run" / "round-2" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 48
    pairs = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "pairs.jsonl").read_text().splitlines()]
    if loss == "binary_cringe":
        assert {p["label"] for p in pairs} == {True, False}
    elif loss == "sft":  # each prompt's best sample, alone
        assert all(len(p["completion_ids"]) == 1 and p["label"] is True for p in pairs)
    else:
        assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)


def test_resume_refuses_a_changed_config_but_allows_more_rounds(tmp_path):
    path = write_config(tmp_path, tmp_path / "run", rounds=1)
    IterativeRun(load_config(str(path), [])).run()
    with pytest.raises(
        ValueError,
        match=r"round 1's training rows were paired with min_gap=0.0; this config says "
        r"min_gap=0.5",
    ):
        IterativeRun(load_config(str(path), ["--min_gap", "0.5"])).run()
    with pytest.raises(ValueError, match=r"keys that differ: \['train'\]"):
        IterativeRun(load_config(str(path), ["--train.learning_rate", "0.1"])).run()
    before = (tmp_path / "run" / "round-1" / "samples.jsonl").read_text()
    IterativeRun(load_config(str(path), ["--rounds", "2"])).run()
    assert_complete(tmp_path / "run", 2)
    assert (tmp_path / "run" / "round-1" / "samples.jsonl").read_text() == before
    # what the run now plans is recorded: readers (reports, evaluated_rounds) see round 2
    assert RunDir(tmp_path / "run").evaluated_rounds() == [1, 2]


def test_what_the_machine_resolves_is_part_of_a_resume_check(tmp_path, monkeypatch):
    # device, backend and the number of training processes were resumable keys, yet each changes results: the
    # default dtype, the sampler's seeding, the effective batch.
    from cringe.loop.run import IterateConfig

    path = write_config(tmp_path, tmp_path / "run", rounds=1, eval_prompts=None)
    IterativeRun(load_config(str(path), [])).run()
    with pytest.raises(
        ValueError, match=r"keys that differ: \['backend', 'backend \(resolved here: vllm, was transformers\)'\]"
    ):
        IterativeRun(load_config(str(path), ["--backend", "vllm"])).check_state()
    with pytest.raises(ValueError, match=r"training_processes \(resolved here: 2, was 1\)"):
        IterativeRun(load_config(str(path), ["--accelerate.num_processes", "2"])).check_state()
    monkeypatch.setattr(IterateConfig, "resolved_device", lambda self: "cuda")  # the same run, resumed on a GPU
    config = load_config(str(path), [])
    with pytest.raises(ValueError, match=r"dtype \(resolved here: bfloat16, was float32\)"):
        IterativeRun(config).check_state()


def test_a_run_of_an_earlier_version_resumes(tmp_path):
    # Version 1 hashed every field, so any field added later made every old run refuse to resume. A state.json of
    # that layout (no version, a field it did not know, another hash) must resume and be recorded as version 2.
    path = write_config(tmp_path, tmp_path / "run", rounds=1, eval_prompts=None)
    IterativeRun(load_config(str(path), [])).run()
    state_path = tmp_path / "run" / "state.json"
    state = json.loads(state_path.read_text())
    for key in ("version", "resolved"):
        state.pop(key)
    state["config"].pop("round_prompts")  # a field added after the run was made
    state["hash"] = "0123456789abcdef"
    state_path.write_text(json.dumps(state))
    IterativeRun(load_config(str(path), ["--rounds", "2"])).run()
    assert (tmp_path / "run" / "round-2" / "model" / "config.json").exists()
    assert json.loads(state_path.read_text())["version"] == 2


def test_a_round_whose_pairing_kept_nothing_reruns_with_other_settings(tmp_path, capsys):
    from cringe.cli import main

    out = tmp_path / "run"
    path = write_config(tmp_path, out, rounds=1, eval_prompts=None, min_gap=1e9)
    with pytest.raises(SystemExit) as exit_info:
        main(["iterate", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith("cringe iterate: error: round-1: pairing kept no training rows of 12 prompts")
        and "lower min_gap" in err
    ), err
    assert not (out / "round-1" / "pairs.jsonl").exists() and (out / "round-1" / "scores.jsonl").exists()
    samples = (out / "round-1" / "samples.jsonl").read_text()
    main(["iterate", "--config", str(path), "--min_gap", "0"])
    assert (out / "round-1" / "model" / "config.json").exists()
    assert (out / "round-1" / "samples.jsonl").read_text() == samples  # only pairing ran again
    assert json.loads((out / "round-1" / "pairing.json").read_text())["settings"]["min_gap"] == 0


@pytest.mark.parametrize(
    "section, reward, message",
    [
        ("reward", {"type": "judge", "model": "m"}, "reward (judge): missing base_url (the server's /v1 URL)"),
        (
            "reward",
            {"type": "model", "path": "rm", "max_lenght": 512},
            "reward (model): unknown keys ['max_lenght'] (did you mean 'max_length'?)",
        ),
        (
            "eval_reward",
            {"type": "modle", "path": "rm"},
            "eval_reward: type must be callable, model, judge or instructions",
        ),
    ],
)
def test_the_reward_sections_are_checked_when_the_config_is_read(tmp_path, capsys, section, reward, message):
    # They were checked when a round first scored: a KeyError or TypeError traceback after sampling.
    from cringe.cli import main

    out = tmp_path / "run"
    path = write_config(tmp_path, out, **{section: reward})
    with pytest.raises(SystemExit) as exit_info:
        main(["iterate", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cringe iterate: error: {message}"), err
    assert not out.exists()


def test_config_errors_are_clear(tmp_path):
    path = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(ValueError, match="unknown option --roundz .did you mean '--rounds'"):
        load_config(str(path), ["--roundz", "3"])
    with pytest.raises(ValueError, match="invalid choice: 'kto'"):
        load_config(str(path), ["--loss", "kto"])
    with pytest.raises(ValueError, match="sampling: unknown key 'temprature' .did you mean 'temperature'"):
        load_config(str(path), ["--sampling.temprature", "0.5"])
    with pytest.raises(ValueError, match="train.num_train_epochs: invalid value 'two'"):
        load_config(str(path), ["--train.num_train_epochs", "two"])
    with pytest.raises(ValueError, match="train: .* set by the loop"):
        load_config(str(path), ["--train.loss", "dpo"])


def test_nested_values_are_typed_from_flags_and_yaml(tmp_path):
    path = write_config(tmp_path, tmp_path / "run", train={"learning_rate": "1e-5", "use_cpu": True})
    config = load_config(str(path), ["--sampling.temperature", "0.7", "--rounds=4"])
    assert config.train["learning_rate"] == 1e-5 and isinstance(config.train["learning_rate"], float)
    assert config.sampling["temperature"] == 0.7 and config.rounds == 4
    config = load_config(
        None,
        [
            f"--config={path}",
            "--train.learning_rate",
            "2e-5",
            "--train.use_peft",
            "true",
            "--train.lora_r",
            "4",
            "--reward.kwargs.scale",
            "2",
        ],
    )
    assert config.train["learning_rate"] == 2e-5 and config.train["use_peft"] is True and config.train["lora_r"] == 4
    assert config.reward["kwargs"] == {"scale": 2} and config.reward["type"] == "callable"


def test_a_typo_in_the_train_section_stops_before_any_work(tmp_path, capsys):
    from cringe.cli import main

    out = tmp_path / "run"
    path = write_config(tmp_path, out, train={"learning_rat": 1e-4})
    with pytest.raises(SystemExit) as exit_info:
        main(["iterate", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cringe iterate: error: {path}: train: unknown key 'learning_rat' (did you mean 'learning_rate'?)")
    assert not out.exists()


def _run_cli(config_path, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "cringe", "iterate", "--config", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow  # about 10-40 s (subprocesses); make test-slow runs it
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    assert _run_cli(write_config(tmp_path, reference)).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    config = write_config(tmp_path, killed)
    proc = _run_cli(config)
    deadline = time.time() + 300
    while not (killed / "round-1" / "model").exists():
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "round-2" / "eval.json").exists()
    assert json.loads((killed / "state.json").read_text()).get("finished_rounds") is None

    resumed = _run_cli(config)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert_complete(killed, 2)
    for k in (1, 2):
        for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "eval.json"):
            assert (killed / f"round-{k}" / name).read_text() == (reference / f"round-{k}" / name).read_text(), name
    steps = json.loads((killed / "state.json").read_text())["steps"]
    assert [s["step"] for s in steps if s["round"] == 1].count("model") == 1  # round 1 was not trained twice


def test_round_prompts_gives_each_round_fresh_prompts_wrapping_around(tmp_path):
    out = tmp_path / "run"
    config = load_config(
        str(write_config(tmp_path, out, rounds=3, round_prompts=5, eval_prompts=None, eval_every=1)),
        ["--train.max_steps", "1"],
    )  # which prompts, not training
    IterativeRun(config).run()
    seen = []
    for k in (1, 2, 3):
        rows = [json.loads(line) for line in (out / f"round-{k}" / "samples.jsonl").read_text().splitlines()]
        seen.append(sorted({r["prompt_id"] for r in rows}))
        assert len(rows) == 5 * 4
    # 12 prompts, 5 per round: round 3 wraps from prompt 10 to prompt 2
    assert seen == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 1, 2, 10, 11]]


def test_eval_every_skips_intermediate_rounds_but_never_the_last(tmp_path):
    out = tmp_path / "run"
    config = load_config(
        str(write_config(tmp_path, out, rounds=3, eval_every=2, max_prompts=4, max_eval_prompts=4)),
        ["--train.max_steps", "1"],
    )
    evaluations = IterativeRun(config).run()
    assert [e["round"] for e in evaluations] == [2, 3]
    assert not (out / "round-1" / "eval.json").exists()


def test_bad_round_prompts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="round_prompts"):
        load_config(str(write_config(tmp_path, tmp_path / "run", round_prompts=0)), [])
    config = load_config(str(write_config(tmp_path, tmp_path / "run2", round_prompts=13)), [])
    with pytest.raises(ValueError, match=r"13 prompts asked for \(round_prompts / count\) but only 12 prompts"):
        IterativeRun(config).run()


def test_a_step_finished_but_not_recorded_is_listed_once_on_resume(tmp_path):
    """Killed between a step's last rename and its record in state.json: the rerun lists it (untimed) and does
    not redo it."""
    out = tmp_path / "run"
    config = load_config(str(write_config(tmp_path, out, rounds=1, eval_prompts=None)), ["--train.max_steps", "1"])
    IterativeRun(config).run()
    state = json.loads((out / "state.json").read_text())
    state["steps"] = [s for s in state["steps"] if s["step"] != "model"]
    (out / "state.json").write_text(json.dumps(state))
    weights = (out / "round-1" / "model" / "model.safetensors").stat().st_mtime_ns
    IterativeRun(config).run()
    steps = json.loads((out / "state.json").read_text())["steps"]
    assert [s["seconds"] for s in steps if s["step"] == "model"] == [None]
    assert (out / "round-1" / "model" / "model.safetensors").stat().st_mtime_ns == weights


@pytest.mark.parametrize("label", ["bad", "good"])
def test_a_round_labelled_all_one_way_is_warned_about(tmp_path, caplog, label):
    """binary_cringe: equal scores fall below the default threshold (just above the mean), so every sample is
    labelled bad; a threshold under every score labels them all good. Either is one warning line naming the round."""
    from cringe.generation import Sample

    threshold = {"bad": None, "good": 0.1}[label]
    config = load_config(
        str(write_config(tmp_path, tmp_path / "run", loss="binary_cringe", binary_threshold=threshold)), []
    )
    samples = [Sample(i // 2, i % 2, [1, 2], [3, 4], "ab", "stop", prompt="q") for i in range(6)]
    round_dir = tmp_path / "run" / "round-3"
    round_dir.mkdir(parents=True)
    with caplog.at_level("WARNING", logger="cringe.loop.pairing"):
        rows = IterativeRun(config).pair(samples, [0.5] * 6, round_dir)
    assert {r["label"] for r in rows} == {label == "good"}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"round-3: all 6 samples labelled {label}")


def test_mixed_labels_are_not_warned_about(tmp_path, caplog):
    from cringe.generation import Sample

    config = load_config(str(write_config(tmp_path, tmp_path / "run", loss="binary_cringe")), [])
    samples = [Sample(i // 2, i % 2, [1, 2], [3, 4], "ab", "stop", prompt="q") for i in range(4)]
    (tmp_path / "run" / "round-1").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="cringe.loop.pairing"):
        rows = IterativeRun(config).pair(samples, [0.1, 0.9, 0.2, 0.8], tmp_path / "run" / "round-1")
    assert [r["label"] for r in rows] == [False, True, False, True] and not caplog.records


def test_where_each_step_runs_is_decided_from_the_config(tmp_path, monkeypatch):
    """In this process on a CPU; sampling and scoring in stage processes when asked (or with a GPU, vLLM, another
    Python for sampling); training and data-parallel sampling under accelerate launch."""
    import torch

    from cringe.loop.executor import AccelerateLaunch, InProcess, Loaded, StageProcess, executors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def where(*flags):
        chosen = executors(load_config(str(write_config(tmp_path, tmp_path / "run")), list(flags)), Loaded())
        return {kind: type(getattr(chosen, kind)) for kind in ("sample", "score", "train")}

    assert where() == {"sample": InProcess, "score": InProcess, "train": InProcess}
    assert where("--stage_processes", "true") == {"sample": StageProcess, "score": StageProcess, "train": InProcess}
    assert where("--accelerate.num_processes", "2") == {
        "sample": InProcess,
        "score": InProcess,
        "train": AccelerateLaunch,
    }
    assert where("--accelerate.sample", "true", "--backend", "transformers") == {
        "sample": AccelerateLaunch,
        "score": StageProcess,
        "train": AccelerateLaunch,
    }
    python = executors(
        load_config(str(write_config(tmp_path, tmp_path / "run")), ["--sampling_python", sys.executable]), Loaded()
    )
    assert python.sample.command(None)[0] == sys.executable and python.score.python is None
    # built on the CPU (TrainingArguments would set up the fake GPU), then run on a GPU
    config = load_config(str(write_config(tmp_path, tmp_path / "run")), ["--backend", "transformers"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    chosen = executors(config, Loaded())
    assert type(chosen.sample) is StageProcess and type(chosen.score) is StageProcess
    assert type(chosen.train) is InProcess
