"""LoRA inside the loop, and per-round results reaching TensorBoard with one global step across rounds."""

import json

import pytest

from .test_loop import write_config


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("loss", ["pairwise_cringe", pytest.param("dpo", marks=pytest.mark.slow)])
def test_two_round_lora_iterate_logs_to_tensorboard(tmp_path, loss):
    pytest.importorskip("peft")
    pytest.importorskip("tensorboard")
    from cringe.loop.run import IterativeRun, load_config

    out = tmp_path / "run"
    path = write_config(
        tmp_path,
        out,
        loss=loss,
        report_to=["tensorboard"],
        train={
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "per_device_train_batch_size": 4,
            "num_train_epochs": 1,
            "learning_rate": 1e-2,
            "use_cpu": True,
            "disable_tqdm": True,
            "save_strategy": "steps",
            "save_steps": 1,
            "logging_steps": 1,
        },
    )
    evaluations = IterativeRun(load_config(str(path), [])).run()
    assert [e["round"] for e in evaluations] == [1, 2]
    for k in (1, 2):
        assert (out / f"round-{k}" / "model" / "adapter" / "adapter_config.json").exists()
        assert not (out / f"round-{k}" / "checkpoints").exists()  # deleted; the logs live elsewhere
    tags = scalars(out / "logs")
    assert [step for step, _ in tags["eval/win_rate"]] == [1, 2]
    for tag in (
        "eval/win_rate_ci_low",
        "eval/kl",
        "eval/reward",
        "eval/length_tokens",
        "eval/distinct_2",
        "pairs/kept",
    ):
        assert [step for step, _ in tags[tag]] == [1, 2], tag
    if loss == "pairwise_cringe":
        assert [step for step, _ in tags["train/mean_gate"]] == [1, 2]
    eval_json = json.loads((out / "round-2" / "eval.json").read_text())
    assert tags["eval/win_rate"][1][1] == pytest.approx(eval_json["win_rate"]["win_rate"])
    train_steps = [step for step, _ in tags["train/loss"]]
    round1_steps = max(h["step"] for h in json.loads((out / "round-1" / "model" / "train_log.json").read_text()))
    # one global step across rounds: round 2's curve starts where round 1's ended
    assert train_steps == sorted(train_steps) and len(set(train_steps)) == len(train_steps)
    assert min(train_steps) == 1 and max(train_steps) > round1_steps


def test_trackers_are_checked_when_the_config_is_read(tmp_path):
    from cringe.loop.run import load_config

    with pytest.raises(ValueError, match="unknown trackers \\['tensorbord'\\]"):
        load_config(str(write_config(tmp_path, tmp_path / "run", report_to=["tensorbord"])), [])
    with pytest.raises(ValueError, match="report_to.*set by the loop"):
        load_config(str(write_config(tmp_path, tmp_path / "run2", train={"report_to": "tensorboard"})), [])
