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

from cringe.loop import IterativeRun, load_config
from cringe.testbeds.toy import prompts as toy_prompts


def write_config(tmp_path, out, **overrides):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(12)))
    config = {
        "model": "tiny-random-llama", "prompts": str(prompts), "eval_prompts": str(prompts), "output_dir": str(out),
        "rounds": 2, "loss": "pairwise_cringe",
        "reward": {"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
        "sampling": {"n": 4, "max_new_tokens": 12, "batch_size": 16},
        "train": {"per_device_train_batch_size": 4, "num_train_epochs": 2, "learning_rate": 3e-3, "use_cpu": True,
                  "disable_tqdm": True, "save_strategy": "no", "logging_steps": 1},
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


@pytest.mark.parametrize("loss", ["pairwise_cringe", "binary_cringe", "dpo"])
def test_two_rounds_complete_with_evaluation(tmp_path, loss):
    config = load_config(str(write_config(tmp_path, tmp_path / "run", loss=loss)), [])
    evaluations = IterativeRun(config).run()
    assert_complete(tmp_path / "run", 2)
    assert [e["round"] for e in evaluations] == [1, 2]
    for e in evaluations:
        assert 0 <= e["win_rate_vs_initial"]["win_rate"] <= 1 and e["win_rate_vs_initial"]["n"] == 12
        assert {"reward", "kl_to_initial", "length_tokens", "distinct_2", "repeated_3gram_rate"} <= set(e)
    samples = [json.loads(line) for line in (tmp_path / "run" / "round-2" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 48
    pairs = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "pairs.jsonl").read_text().splitlines()]
    if loss == "binary_cringe":
        assert {p["label"] for p in pairs} == {True, False}
    else:
        assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)


def test_resume_refuses_a_changed_config_but_allows_more_rounds(tmp_path):
    path = write_config(tmp_path, tmp_path / "run", rounds=1)
    IterativeRun(load_config(str(path), [])).run()
    with pytest.raises(ValueError, match=r"keys that differ: \['min_gap'\]"):
        IterativeRun(load_config(str(path), ["--min_gap", "0.5"])).run()
    with pytest.raises(ValueError, match=r"keys that differ: \['train'\]"):
        IterativeRun(load_config(str(path), ["--train.learning_rate", "0.1"])).run()
    before = (tmp_path / "run" / "round-1" / "samples.jsonl").read_text()
    IterativeRun(load_config(str(path), ["--rounds", "2"])).run()
    assert_complete(tmp_path / "run", 2)
    assert (tmp_path / "run" / "round-1" / "samples.jsonl").read_text() == before


def test_config_errors_are_clear(tmp_path):
    path = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(ValueError, match="unknown iterate config keys"):
        load_config(str(path), ["--roundz", "3"])
    with pytest.raises(ValueError, match="loss must be one of"):
        load_config(str(path), ["--loss", "sft"])
    with pytest.raises(TypeError):
        load_config(str(path), ["--sampling.temprature", "0.5"])


def _run_cli(config_path, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "cringe", "iterate", "--config", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


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


def test_atomic_writes_leave_no_partial_file(tmp_path):
    from cringe.loop import write_jsonl

    target = tmp_path / "x.jsonl"
    write_jsonl(target, [{"a": 1}])
    assert target.read_text() == '{"a": 1}\n' and not list(tmp_path.glob(".*tmp*"))


def test_cringe_evaluate_compares_a_trained_round_with_the_start(tmp_path, capsys):
    from cringe.cli import evaluate

    path = write_config(tmp_path, tmp_path / "run", rounds=1)
    IterativeRun(load_config(str(path), [])).run()
    reward = tmp_path / "reward.yaml"
    reward.write_text('type: callable\nfunction: "cringe.testbeds.toy:vowel_share"\n')
    out = tmp_path / "eval.json"
    evaluate(["--policy", str(tmp_path / "run" / "round-1" / "model"), "--baseline", "tiny-random-llama",
              "--prompts", str(tmp_path / "prompts.jsonl"), "--reward", str(reward), "--samples", "2",
              "--max-new-tokens", "8", "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["win_rate"]["n"] == 12 and 0 <= result["win_rate"]["win_rate"] <= 1
    assert result["kl_policy_to_baseline"]["n"] == 24 and result["kl_policy_to_baseline"]["mean"] > 0
    assert "win rate of policy vs baseline" in capsys.readouterr().out


def test_round_prompts_gives_each_round_fresh_prompts_wrapping_around(tmp_path):
    out = tmp_path / "run"
    config = load_config(str(write_config(tmp_path, out, rounds=3, round_prompts=5, eval_prompts=None,
                                          eval_every=1)), [])
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
    config = load_config(str(write_config(tmp_path, out, rounds=3, eval_every=2, max_prompts=4,
                                          max_eval_prompts=4)), [])
    evaluations = IterativeRun(config).run()
    assert [e["round"] for e in evaluations] == [2, 3]
    assert not (out / "round-1" / "eval.json").exists()


def test_bad_round_prompts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="round_prompts"):
        load_config(str(write_config(tmp_path, tmp_path / "run", round_prompts=0)), [])
    config = load_config(str(write_config(tmp_path, tmp_path / "run2", round_prompts=13)), [])
    with pytest.raises(ValueError, match="round_prompts=13 but only 12 prompts"):
        IterativeRun(config).run()
