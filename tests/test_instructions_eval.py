"""IFEval's numbers wherever an evaluation is reported: `cringe evaluate` and the loop's round evaluation on
IFEval-format prompts (eval.json's `instructions` block, the printed tables, the model card, the run report), a
policy against reference outputs scored by a source that reads samples, and the newcomer's example config."""

import json
from pathlib import Path

import pytest
import yaml

from cringe.errors import UserError
from cringe.generation import Sample

pytest.importorskip("if_verifiable")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "iterate_instructions.yaml"

# Instruction types random text follows about half the time, so that a tiny random policy's samples differ.
RANDOM_TEXT_TYPES = ("punctuation:no_comma", "length_constraints:number_words", "keywords:forbidden_words")


def instruction_rows(n_train, n_heldout):
    from cringe.testbeds.instructions import make_prompts

    return make_prompts(n_train, n_heldout, seed=0, types=RANDOM_TEXT_TYPES)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored(run_dir, scores, samples):
    """score_rows-like results of a scored samples file, keyed by prompt (what the evaluation computes from)."""
    from cringe.loop.rundir import RunDir

    rows = RunDir.score_rows(run_dir / scores, run_dir / samples)
    drawn = RunDir.samples(run_dir / samples)
    return [{"key": s.prompt_id, **r["instructions"]} for s, r in zip(drawn, rows)]


# ----- the block and its tables --------------------------------------------------------------------------------
def result(key, ids, strict, loose):
    return {"key": key, "instruction_id_list": ids, "strict": strict, "loose": loose}


def test_the_summary_holds_four_accuracies_and_the_rate_per_type():
    from cringe.instructions import accuracy_tables, evaluation_results, evaluation_summary

    results = [
        result(0, ["a:x", "b:y"], [True, False], [True, True]),
        result(0, ["a:x", "b:y"], [False, False], [True, False]),
        result(1, ["a:x"], [True], [True]),
    ]
    summary = evaluation_summary(results)
    assert summary["prompt_level_strict"]["mean"] == pytest.approx(1 / 3)
    assert summary["instruction_level_loose"]["mean"] == pytest.approx(4 / 5)  # over instructions, not fractions
    assert summary["responses"] == 3 and summary["prompts"] == 2
    assert summary["per_type"] == {
        "a:x": {"strict": 2 / 3, "loose": 1.0, "n": 3},
        "b:y": {"strict": 0.0, "loose": 0.5, "n": 2},
    }
    samples = [Sample(7, 0, [1], [2], "c", "stop"), Sample(8, 0, [1], [2], "d", "stop")]
    rows = [{"score": 1.0, "instructions": results[2]}, {"score": 0.5, "instructions": results[0]}]
    assert [r["key"] for r in evaluation_results(samples, rows)] == [7, 8]  # keyed by prompt
    assert evaluation_results(samples, [{"score": 1.0}, {"score": 0.5}]) is None  # a reward without the results
    base = evaluation_summary(results[1:])
    tables = accuracy_tables(
        [{"name": "round 1", "instructions": {"policy": summary, "baseline": base}}, {"name": "round 2"}], "name", "M0"
    )
    assert "| M0 | 2 | 0.500 (" in tables and "| round 1 | 2 | 0.333 (" in tables
    assert "| a:x | 2 | 0.50 / 1.00 | 0.67 / 1.00 |" in tables and "| b:y | 1 | 0.00 / 0.00 | 0.00 / 0.50 |" in tables
    assert accuracy_tables([{"name": "round 1"}], "name", "M0") == ""


# ----- inside `cringe iterate` and `cringe evaluate` -----------------------------------------------------------
def test_the_loop_reports_ifeval_accuracies_for_each_round_and_the_start(tmp_path, capsys):
    from cringe.cli import main
    from cringe.instructions import evaluation_summary
    from cringe.report import write_run_report

    from .test_loop import write_config

    rows = instruction_rows(8, 6)
    train, held_out = (
        write_rows(tmp_path / "train.jsonl", rows["train"]),
        write_rows(tmp_path / "eval.jsonl", rows["heldout"]),
    )
    config = write_config(
        tmp_path,
        tmp_path / "run",
        prompts=str(train),
        eval_prompts=str(held_out),
        rounds=1,
        reward={"type": "instructions", "min_words": 2},
        sampling={"n": 4, "max_new_tokens": 8, "batch_size": 16},
        eval_samples=2,
    )
    main(["iterate", "--config", str(config)])
    run = tmp_path / "run"
    evaluation = json.loads((run / "round-1" / "eval.json").read_text())
    assert {"win_rate", "reward", "kl", "text"} <= set(evaluation)  # the schema's keys stay
    block = evaluation["instructions"]
    for side, scores, samples in (
        ("policy", "round-1/eval_scores.jsonl", "round-1/eval_samples.jsonl"),
        ("baseline", "baseline_scores.jsonl", "baseline_samples.jsonl"),
    ):
        expected = evaluation_summary(scored(run, scores, samples), seed=0)
        assert block[side] == expected, side  # the same results, the same seed: the same numbers
        assert block[side]["prompts"] == 6 and block[side]["responses"] == 12
        a = block[side]["instruction_level_loose"]
        assert a["ci_low"] <= a["mean"] <= a["ci_high"]
    assert set(block["policy"]["per_type"]) <= set(RANDOM_TEXT_TYPES)
    printed = capsys.readouterr().out
    assert "IFEval accuracies" in printed and "| round 1 | 6 |" in printed and "| M0 | 6 |" in printed
    card = (run / "round-1" / "model" / "README.md").read_text()
    assert "IFEval accuracies" in card and "instruction loose" in card
    for page in (run / "report" / "report.md", write_run_report([run], tmp_path / "report").with_suffix(".md")):
        text = page.read_text()
        assert "## Instruction following (IFEval)" in text and "| run, round 1 | 6 |" in text


def test_cringe_evaluate_reads_ifeval_rows_and_reports_their_accuracies(tmp_path, capsys):
    from cringe.cli import main
    from cringe.instructions import evaluation_summary

    rows = instruction_rows(2, 5)["heldout"]
    prompts = write_rows(tmp_path / "ifeval.jsonl", rows)
    reward = tmp_path / "reward.yaml"
    reward.write_text("type: instructions\nmin_words: 2\n")
    out, work = tmp_path / "result.json", tmp_path / "work"
    main(
        ["evaluate", "--policy", "tiny-random-llama", "--baseline", "tiny-random-llama", "--prompts", str(prompts)]
        + ["--reward", str(reward), "--samples", "2", "--max-new-tokens", "8", "--device", "cpu"]
        + ["--work-dir", str(work), "--output", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["win_rate"]["n"] == 5
    block = result["instructions"]
    policy = scored(work, "round-1/eval_scores.jsonl", "round-1/eval_samples.jsonl")
    assert block["policy"] == evaluation_summary(policy, seed=0)
    assert block["baseline"]["prompts"] == 5 and block["baseline"]["responses"] == 10
    # the samples carried the rows' columns: the checks read them, not a prompts file
    drawn = [json.loads(line) for line in (work / "baseline_samples.jsonl").read_text().splitlines()]
    assert drawn[0]["columns"]["instruction_id_list"] == rows[0]["instruction_id_list"]
    printed = capsys.readouterr().out
    assert "IFEval accuracies" in printed and "| baseline | 5 |" in printed and "| tiny-random-llama | 5 |" in printed


def test_cringe_evaluate_refuses_malformed_instruction_rows_before_sampling(tmp_path):
    from cringe.cli import main

    rows = instruction_rows(2, 2)["heldout"]
    rows[1] = dict(rows[1], instruction_id_list=["punctuation:no_comma", "startend:no_such_check"], kwargs=[{}, {}])
    prompts = write_rows(tmp_path / "bad.jsonl", rows)
    reward = tmp_path / "reward.yaml"
    reward.write_text("type: instructions\n")
    with pytest.raises(UserError, match=r"row 1 \(key \d+\), field 'instruction_id_list\[1\]'"):
        main(
            ["evaluate", "--policy", "tiny-random-llama", "--baseline", "tiny-random-llama", "--prompts", str(prompts)]
            + ["--reward", str(reward), "--device", "cpu", "--work-dir", str(tmp_path / "work"), "--debug"]
        )  # fmt: skip
    assert not (tmp_path / "work" / "baseline_samples.jsonl").exists()


# ----- against reference outputs ------------------------------------------------------------------------------
def test_reference_outputs_are_judged_by_a_source_that_reads_samples(tokenizer):
    from cringe.data import load_prompts
    from cringe.reference import judge_outcomes
    from cringe.rewards import load_reward_source

    row = {
        "prompt": "Describe the moon. Do not use any commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    }
    prompts = load_prompts([dict(row, key=i) for i in range(3)], tokenizer)
    reward = load_reward_source({"type": "instructions"})
    policy = ["The moon is bright", "The moon, bright", "The moon is grey"]
    reference = ["It glows, softly", "It glows softly", "It is grey"]
    assert judge_outcomes(reward, prompts, policy, reference) == [1.0, 0.0, 0.5]
    with pytest.raises(UserError, match="scores samples"):  # the bare-prompt interface it used to call
        reward.score(["p"], ["a"])

    def no_reward_for_empty(completions, **kwargs):
        return [None if not c else float(len(c)) for c in completions]

    from cringe.rewards import CallableReward

    assert judge_outcomes(CallableReward(no_reward_for_empty), prompts[:2], ["", "ab"], ["x", "a"]) == [None, 1.0]


def test_cli_evaluate_against_reference_outputs_with_instruction_checks(tmp_path, capsys):
    from cringe.cli import main

    rows = [
        {
            "instruction": "Describe the sea. Do not use any commas.",
            "output": "The sea is wide and blue and calm today",
            "generator": "ref",
            "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}],
        },
        {
            "instruction": "Describe snow. Answer with at least 40 words.",
            "output": "Snow is cold.",
            "generator": "ref",
            "instruction_id_list": ["length_constraints:number_words"],
            "kwargs": [{"num_words": 40, "relation": "at least"}],
        },
    ]
    rows[0]["dataset"] = "sea"  # a column one row lacks reaches the reward as None there
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(rows))
    reward = tmp_path / "reward.yaml"
    reward.write_text("type: instructions\n")
    out = tmp_path / "result.json"
    main(
        ["evaluate", "--policy", "tiny-random-llama", "--baseline", str(outputs), "--reward", str(reward)]
        + ["--max_new_tokens", "6", "--device", "cpu", "--output", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["n_prompts"] == 2 and result["undecided"] == 0
    # the first reference follows its instruction, the second cannot: the policy at best ties the first
    assert result["win_rate"]["win_rate"] in (0.25, 0.5)
    assert "win rate of tiny-random-llama vs the reference outputs" in capsys.readouterr().out
    rows[1]["kwargs"] = [{"num_words": 40}]
    outputs.write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"row 1, field 'kwargs\[0\]'.*missing relation"):
        main(
            [
                "evaluate",
                "--policy",
                "tiny-random-llama",
                "--baseline",
                str(outputs),
                "--reward",
                str(reward),
                "--debug",
            ]
        )


# ----- the newcomer's example ---------------------------------------------------------------------------------
def test_the_instruction_example_config_loads_and_its_prompts_are_the_documented_command():
    from cringe.durable.files import read_jsonl
    from cringe.loop.run import load_config
    from cringe.testbeds.instructions import make_prompts

    config = load_config(str(EXAMPLE), [])
    assert config.reward == {"type": "instructions", "min_words": 10} and config.loss == "pairwise_cringe"
    assert config.model == "smollm2-135m-instruct"
    assert config.rounds * config.round_prompts <= len(read_jsonl(ROOT / config.prompts))
    # The files are what the command in the config's comment writes.
    text = EXAMPLE.read_text()
    assert "make_prompts(48, 32, seed=0)" in text
    rows = make_prompts(48, 32, seed=0)
    assert read_jsonl(ROOT / config.prompts) == rows["train"]
    assert read_jsonl(ROOT / config.eval_prompts) == rows["heldout"]
    assert yaml.safe_load(text)["prompts"] == "examples/data/instruction_prompts.jsonl"
