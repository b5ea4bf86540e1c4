"""Methods trained by TRL inside a run directory (cringe.demo.online: GRPO, RLOO): the run's reward called TRL's
way with the prompt rows' columns, checkpoints and resume; and the instruction comparison that runs GRPO beside
the loop's methods (bench/research/instructions_compare.py)."""

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

from cringe.instructions import score_rows
from cringe.rewards import load_reward_source, trl_reward_function

from .conftest import chat

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {
        "prompt": [chat("user", "Write about tea. Do not use any commas.")],
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    },
    {
        "prompt": [chat("user", "Write about snow. Answer with less than 5 words.")],
        "instruction_id_list": ["length_constraints:number_words"],
        # as a datasets.Dataset hands a struct column back: every key of every row, None where a row has none
        "kwargs": [{"num_words": 5, "relation": "less than", "keywords": None}],
    },
]


def trl_call(reward, rows, completions, **extra):
    """Call `reward` the way GRPOTrainer 1.16 does: conversational completions, every other column by name, and
    its own extras."""
    return reward(
        prompts=[r["prompt"] for r in rows],
        completions=[[{"role": "assistant", "content": c}] for c in completions],
        completion_ids=[[1, 2, 3] for _ in completions],
        instruction_id_list=[r["instruction_id_list"] for r in rows],
        kwargs=[r["kwargs"] for r in rows],
        trainer_state=object(),
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
        **extra,
    )


def test_the_instructions_reward_called_the_trl_way_scores_as_the_loop_does():
    pytest.importorskip("if_verifiable")
    reward = trl_reward_function(load_reward_source({"type": "instructions", "min_words": 2}), name="instructions")
    completions = ["Tea is warm and calm", "Snow, snow, snow falls on the hills"]
    scores = trl_call(reward, ROWS, completions)
    expected = [r["score"] for r in score_rows(ROWS, completions, min_words=2)]
    assert scores == expected == [1.0, 0.0]  # no commas: followed; 8 words with commas, not under 5: not
    assert reward.__name__ == "instructions"
    # the guard applies as in the loop: one word scores 0 even though it has no comma
    assert trl_call(reward, ROWS[:1], ["Tea"]) == [0.0]


def test_a_source_without_columns_gets_prompts_and_texts():
    seen = {}

    def by_length(prompts, completions):
        seen["prompts"] = prompts
        return [float(len(c)) for c in completions]

    from cringe.rewards import CallableReward

    reward = trl_reward_function(CallableReward(by_length))
    assert trl_call(reward, ROWS, ["ab", "abcd"]) == [2.0, 4.0]
    # as the loop's scoring gives a positional function its prompts: the text of the user's turns
    assert seen["prompts"] == [r["prompt"][0]["content"] for r in ROWS]


def _grpo_run(tmp_path):
    from cringe.loop.run import IterateConfig, IterativeRun

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Say something about {t}.", "target": "a"}) + "\n" for t in "xyzw")
    )
    config = IterateConfig(
        model="tiny-random-llama",
        prompts=str(prompts),
        output_dir=str(tmp_path / "grpo"),
        rounds=1,
        reward={"type": "callable", "function": "tests.test_online:count_target"},
        backend="transformers",
    )
    return IterativeRun(config)


def count_target(completions, target, **kwargs):
    """A GRPO reward as TRL users write them, reading the `target` column."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(text.count(t)) for text, t in zip(texts, target)]


@pytest.mark.slow
def test_grpo_resumes_from_its_checkpoints_and_reads_the_columns(tmp_path, monkeypatch, caplog):
    pytest.importorskip("trl")
    import cringe.demo.online as online
    from cringe.demo.online import OnlineSettings, run_online

    settings = OnlineSettings(num_generations=2, max_completion_length=4, save_steps=1, seed=0)
    seen_columns = []
    real = trl_reward_function

    def spying(source, name="reward"):
        fn = real(source, name)

        def wrapped(**kwargs):
            seen_columns.append(sorted(kwargs))
            return fn(**kwargs)

        wrapped.__name__ = name
        return wrapped

    monkeypatch.setattr(online, "trl_reward_function", spying)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if stopped once training had finished, before M_1 is published

    monkeypatch.setattr(online, "publish_model", interrupted)
    run = _grpo_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_online(run, "grpo", settings)
    checkpoints = sorted(p.name for p in run.run_dir.checkpoints(1).glob("checkpoint-*"))
    assert checkpoints, "no checkpoint was saved"
    assert "target" in seen_columns[0]  # the prompt rows' column reached the reward function

    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="cringe.demo.online"):
        run_online(_grpo_run(tmp_path), "grpo", settings)
    assert f"resuming from {run.run_dir.checkpoints(1) / checkpoints[-1]}" in caplog.text
    assert (run.run_dir.model(1) / "model.safetensors").exists()
    assert (run.run_dir.round(1) / "eval.json").exists() is False  # no held-out prompts: no evaluation to write
    card = (run.run_dir.model(1) / "README.md").read_text()
    assert "grpo" in card


@pytest.mark.slow
def test_the_instruction_comparison_runs_every_method_and_reports(tmp_path):
    pytest.importorskip("if_verifiable")
    pytest.importorskip("trl")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location(
        "instructions_compare", ROOT / "bench/research/instructions_compare.py"
    )
    compare = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = compare  # dataclasses look their module up while the file runs
    spec.loader.exec_module(compare)
    out = tmp_path / "compare"
    compare.main(["--grid", "smoke", "--seed", "0", "--output-dir", str(out)])
    for name in compare.METHODS:
        assert (out / "seed-0" / "methods" / name / "round-1" / "eval.json").exists(), name
    compare.main(["--report", "--output-dir", str(out), "--out", str(tmp_path / "result")])
    table = json.loads((tmp_path / "result.json").read_text())["table"]
    assert set(table) >= {"start", "best_of_1", "best_of_16", *compare.METHODS}
    for name, row in table.items():
        for key in ("prompt_level_strict", "instruction_level_loose"):
            assert 0 <= row[key]["ci_low"] <= row[key]["mean"] <= row[key]["ci_high"] <= 1, (name, key)
    assert table["best_of_16"]["kl"] == pytest.approx(compare.best_of_n_kl(16))
    assert (tmp_path / "result.png").stat().st_size > 10_000
    assert "GRPO (TRL GRPOTrainer)" in (tmp_path / "result.md").read_text()
