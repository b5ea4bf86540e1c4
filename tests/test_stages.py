"""The stage verbs (`cringe sample`, `cringe score`), device placement, and the loop's stages in subprocesses."""

import json

import pytest
import torch

from cringe.cli import main
from cringe.testbeds.toy import prompts as toy_prompts


def prompts_file(tmp_path, n=6):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(n)))
    return path


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_and_score_verbs_alone(tmp_path, capsys):
    prompts = prompts_file(tmp_path)
    samples = tmp_path / "samples.jsonl"
    main(
        [
            "sample",
            "--model",
            "tiny-random-llama",
            "--prompts",
            str(prompts),
            "--output",
            str(samples),
            "--n",
            "3",
            "--max-new-tokens",
            "5",
            "--seed",
            "7",
            "--device",
            "cpu",
        ]
    )
    rows = read(samples)
    assert len(rows) == 18 and {r["sample_id"] for r in rows} == {0, 1, 2}
    assert all(r["prompt"] and r["seed"] is not None and r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(len(r["completion_ids"]) <= 5 for r in rows)
    assert "18 samples" in capsys.readouterr().out
    reward = tmp_path / "reward.yaml"
    reward.write_text('type: callable\nfunction: "cringe.testbeds.toy:vowel_share"\n')
    scores = tmp_path / "scores.jsonl"
    main(["score", "--samples", str(samples), "--reward", str(reward), "--output", str(scores)])
    from cringe.testbeds.toy import vowel_share

    expected = vowel_share([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [r["score"] for r in read(scores)] == pytest.approx(expected)
    assert [(r["prompt_id"], r["sample_id"]) for r in read(scores)] == [(r["prompt_id"], r["sample_id"]) for r in rows]


def test_sample_resumes_from_finished_shards(tmp_path, monkeypatch):
    from cringe.loop import stages

    prompts = prompts_file(tmp_path, 5)
    args = [
        "sample",
        "--model",
        "tiny-random-llama",
        "--prompts",
        str(prompts),
        "--n",
        "2",
        "--max_new_tokens",
        "4",
        "--device",
        "cpu",
    ]
    monkeypatch.setattr(stages, "SHARD_PROMPTS", 2)
    monkeypatch.setattr(stages.sample_to_file, "__kwdefaults__", {"shard_prompts": 2})
    main(args + ["--output", str(tmp_path / "full.jsonl")])
    # A killed stage: two of three shards finished. The rerun samples only the missing one, and ends identical.
    shards = tmp_path / ".part-shards"
    shards.mkdir()
    full = read(tmp_path / "full.jsonl")
    for start in (0, 2):
        (shards / f"shard-{start:07d}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in full if start <= r["prompt_id"] < start + 2)
        )
    from cringe.loop import executor

    opened = []
    original = stages.open_sampler  # the sampling job's: `cringe sample` runs it
    monkeypatch.setattr(executor, "open_sampler", lambda *a, **k: opened.append(1) or original(*a, **k))
    main(args + ["--output", str(tmp_path / "part.jsonl")])
    assert opened == [1] and read(tmp_path / "part.jsonl") == full and not shards.exists()


def test_score_refuses_samples_without_prompt_text(tmp_path, capsys):
    samples = tmp_path / "old.jsonl"
    samples.write_text(
        json.dumps(
            {
                "prompt_id": 0,
                "sample_id": 0,
                "prompt_ids": [1],
                "completion_ids": [2],
                "completion": "x",
                "finish_reason": "stop",
            }
        )
        + "\n"
    )
    reward = tmp_path / "reward.yaml"
    reward.write_text('type: callable\nfunction: "cringe.testbeds.toy:vowel_share"\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--samples", str(samples), "--reward", str(reward), "--output", str(tmp_path / "s.jsonl")])
    assert exit_info.value.code == 2 and "carry no prompt text" in capsys.readouterr().err


# ----- placement --------------------------------------------------------------------------------------------


def test_device_and_dtype_placement_rules(monkeypatch):
    from cringe.errors import UserError
    from cringe.models import default_dtype, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device(None) == "cuda" and resolve_device("cuda:1") == "cuda:1"
    assert default_dtype(None, "cuda") == "bfloat16" and default_dtype("float32", "cuda") == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and default_dtype(None, "cpu") == "float32"
    with pytest.raises(UserError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def iterate_config(tmp_path, **overrides):
    from cringe.loop.run import IterateConfig

    base = dict(
        model="tiny-random-llama",
        prompts=str(prompts_file(tmp_path)),
        output_dir=str(tmp_path / "run"),
        reward={"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
        rounds=1,
        backend="transformers",
    )
    return IterateConfig(**{**base, **overrides})


def test_every_model_of_the_loop_goes_to_the_accelerator(tmp_path, monkeypatch):
    """With a GPU (faked), sampling, the KL passes and the reward model are all placed on it, in bf16."""
    from cringe import models
    from cringe.loop import run as loop
    from cringe.loop import stages
    from cringe.rewards import sources as rewards

    config = iterate_config(tmp_path)  # built on the CPU: TrainingArguments would set up the (fake) GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.resolved_device() == "cuda" and config.use_stage_processes()
    placed = []

    def fake_load_model(spec, tokenizer=None, dtype=None, trust_remote_code=False, device=None):
        placed.append((spec, dtype, device))
        return models.build_tiny_model(models.build_tiny_tokenizer())

    monkeypatch.setattr(stages, "load_model", fake_load_model)  # where the sampler and the loop load models
    monkeypatch.setattr(loop, "load_model", fake_load_model)
    run = loop.IterativeRun(config)
    stages.open_sampler("transformers", "tiny-random-llama", run.tokenizer, device=config.device)
    run._logprobs(0, [])
    assert placed == [("tiny-random-llama", "bfloat16", "cuda"), ("tiny-random-llama", "bfloat16", "auto")]
    assert models.resolve_device(placed[1][2]) == "cuda"
    captured = {}
    monkeypatch.setattr(rewards, "RewardModel", lambda path, **kw: captured.update(kw, path=path))
    rewards.load_reward_source({"type": "model", "path": "rm"}, device=config.device)
    assert captured["device"] == "cuda" and captured["dtype"] == "bfloat16"
    rewards.load_reward_source({"type": "model", "path": "rm", "dtype": "float32"}, device="cpu")
    assert captured["device"] == "cpu" and captured["dtype"] == "float32"


def test_on_a_cpu_stages_stay_in_process_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not iterate_config(tmp_path).use_stage_processes()
    assert iterate_config(tmp_path, stage_processes=True).use_stage_processes()
    assert iterate_config(tmp_path, backend="vllm").use_stage_processes()  # vLLM always gets its own process
    assert iterate_config(tmp_path).training_arguments(tmp_path)[0].use_cpu is True


def test_stage_subprocesses_write_what_the_in_process_run_writes(tmp_path):
    """The same round with sampling and scoring as `cringe sample` / `cringe score` subprocesses."""
    from cringe.loop.run import IterativeRun

    common = dict(
        sampling={"n": 3, "max_new_tokens": 6, "batch_size": 8},
        train={"max_steps": 1, "per_device_train_batch_size": 4, "disable_tqdm": True, "save_strategy": "no"},
    )
    runs = {}
    for mode in (False, True):
        config = iterate_config(tmp_path, output_dir=str(tmp_path / f"run-{mode}"), stage_processes=mode, **common)
        IterativeRun(config).run()
        runs[mode] = tmp_path / f"run-{mode}" / "round-1"
    for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl"):
        assert (runs[True] / name).read_text() == (runs[False] / name).read_text(), name
    assert not list(runs[True].glob(".*"))  # no job file, samples input or shard folder left behind


def train_job(tmp_path, tokenizer, name: str):
    """A TrainJob of 8 token-id pairs, 2 steps, as the loop writes one (cringe.loop.executor.TrainJob.of_round)."""
    from cringe.loop.executor import TrainJob

    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = tmp_path / name / ".train_rows.jsonl"
    rows.parent.mkdir()
    pairs = [[ids(" yes") + [tokenizer.eos_token_id], ids(" no!") + [tokenizer.eos_token_id]] for _ in range(8)]
    rows.write_text(
        "".join(
            json.dumps({"row": i, "prompt_ids": ids(f"Q{i}?"), "label": None, "completion_ids": pair}) + "\n"
            for i, pair in enumerate(pairs)
        )
    )
    train = {
        "loss": "pairwise_cringe",
        "output_dir": str(rows.parent / "checkpoints"),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }
    return TrainJob(
        model="tiny-random-llama",
        tokenizer="tiny-random-llama",
        rows=str(rows),
        data_kind="pairwise",
        train=train,
        output=str(rows.parent / ".model.tmp"),
        dtype="float32",
        description="8 test pairs",
    )


@pytest.mark.slow  # about 15 s (a child process and 2 launched ranks); make test-slow runs it
def test_one_train_job_trains_the_same_model_in_this_process_in_a_child_and_under_accelerate_launch(
    tmp_path, tokenizer, monkeypatch
):
    """The three executors end in the same call: InProcess runs job.run here; StageProcess and AccelerateLaunch
    write the job beside its output and run `python -m cringe.loop.child JOB.json` (under `accelerate launch`, one
    CPU process here), which reads it back and runs job.run there. Same job, same weights, same log; the training
    curve reaches on_log live here and from the saved log for a child."""
    from safetensors.torch import load_file

    from cringe.loop.executor import AccelerateLaunch, InProcess, Loaded, StageProcess, job_path

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    executors = {
        "here": InProcess(Loaded()),
        "child": StageProcess(),
        "launched": AccelerateLaunch({"num_processes": 1, "cpu": True, "num_machines": 1, "mixed_precision": "no"}),
    }
    weights, curves = {}, {}
    for name, executor in executors.items():
        job = train_job(tmp_path, tokenizer, name)
        curves[name] = []
        executor.run(job, on_log=lambda logs, step, name=name: curves[name].append((step, logs.get("loss"))))
        weights[name] = load_file(f"{job.output}/model.safetensors")
        assert json.loads((tmp_path / name / ".model.tmp" / "train_log.json").read_text())[-1]["step"] == 2
        assert not job_path(job).exists()
    assert [step for step, _ in curves["here"]] == [1, 2, 2] and curves["child"] == curves["launched"]
    assert [loss for _, loss in curves["here"] if loss is not None] == pytest.approx(
        [loss for _, loss in curves["child"] if loss is not None], rel=1e-5
    )
    for name in ("child", "launched"):
        for key, tensor in weights["here"].items():
            torch.testing.assert_close(weights[name][key], tensor, msg=lambda m, n=name: f"{n}: {m}")


def test_a_job_file_is_read_back_as_written_and_a_bad_one_is_named(tmp_path, tokenizer):
    from cringe.errors import UserError
    from cringe.loop.executor import read_job, write_job

    job = train_job(tmp_path, tokenizer, "round-1")
    path = write_job(job)
    assert path.name == ".train-job-model.tmp.json" and read_job(path) == job
    path.write_text(json.dumps({"kind": "bake"}))
    with pytest.raises(UserError, match="not a job file"):
        read_job(path)


@pytest.mark.slow
def test_gpu_iterate_script_smoke_on_cpu(tmp_path):
    """bench/gpu/gpu_iterate.py's own path (its probing stage executor included) with tiny models: every sampling
    and scoring stage ran in a probed process of its own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "gpu" / "gpu_iterate.py"), "--smoke", "--device", "cpu"]
        + ["--prompts", "8", "--eval-prompts", "4", "--new-tokens", "8", "--train-steps", "2"]
        + ["--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = next((tmp_path / "results").glob("gpu_iterate-*-smoke-cpu.md")).read_text()
    assert table.count("| samples.jsonl |") == 2 and table.count("| scores.jsonl |") == 2
    probed = [json.loads(line)["stage"] for line in (tmp_path / "work" / "stage-peaks.jsonl").read_text().splitlines()]
    assert probed.count("sample:samples.jsonl") == 2 and probed.count("score:scores.jsonl") == 2
    assert "sample:baseline_samples.jsonl" in probed
