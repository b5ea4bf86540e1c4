"""A policy against reference outputs (AlpacaEval / AlpacaFarm format): reading, judging in both orders, export
in AlpacaEval's format, and prompt loading from the published evaluation format."""

import json

import pytest

from cringe.errors import UserError
from cringe.reference import annotation_rows, instruction_text, length_controlled, read_outputs
from tests.test_rewards import JudgeServer

FARM = "examples/data/alpaca_farm_evaluation_sample.json"


def test_alpaca_farm_rows_read_and_become_chat_prompts(tokenizer):
    from cringe.data import load_prompts

    rows = read_outputs(FARM)
    assert instruction_text(rows[1]) == "Translate the sentence into French.\n\nThe library opens at nine."
    assert instruction_text(rows[0]) == rows[0]["instruction"]  # an empty input adds nothing
    prompts = load_prompts(FARM, tokenizer)
    assert len(prompts) == len(rows)
    assert prompts[1].messages == [{"role": "user", "content": instruction_text(rows[1])}]
    assert tokenizer.decode(prompts[1].ids).startswith("<|im_start|>user\nTranslate")  # the policy's template


def test_bad_outputs_file_names_row_and_field(tmp_path):
    bad = tmp_path / "outputs.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]))
    with pytest.raises(UserError, match="row 1, field 'output'"):
        read_outputs(str(bad))
    bad.write_text(json.dumps({"instruction": "a"}))
    with pytest.raises(UserError, match="non-empty JSON list"):
        read_outputs(str(bad))


def test_length_controlled_says_where_it_does_not_apply():
    lc = length_controlled([{"preference": 2.0}] * 6, 6)
    assert lc["computed"] is False and "805" in lc["reason"]


def judge_prefers_reference(content, _):
    """A judge that knows the reference outputs: it picks whichever response is one of them."""
    references = {r["output"] for r in read_outputs(FARM)}
    a = content.split("Response A:\n")[1].split("\n\nResponse B:")[0]
    return 200, "A" if a in references else "B"


def test_cli_evaluate_against_reference_outputs(tmp_path, capsys):
    from cringe.cli import main

    with JudgeServer(judge_prefers_reference) as url:
        reward = tmp_path / "judge.yaml"
        reward.write_text(f"type: judge\nbase_url: {url}\nmodel: ref-judge\nconcurrency: 2\n")
        export = tmp_path / "tiny_outputs.json"
        main(
            [
                "evaluate",
                "--policy",
                "tiny-random-llama",
                "--baseline",
                FARM,
                "--reward",
                str(reward),
                "--max_new_tokens",
                "6",
                "--device",
                "cpu",
                "--export_outputs",
                str(export),
                "--generator",
                "tiny",
                "--output",
                str(tmp_path / "result.json"),
            ]
        )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["n_prompts"] == 6 and result["undecided"] == 0
    assert result["win_rate"]["win_rate"] == 0.0  # the reference won every comparison, in both orders
    assert result["length_controlled"]["computed"] is False
    exported = json.loads(export.read_text())
    rows = read_outputs(FARM)
    assert [set(r) for r in exported] == [{"instruction", "output", "generator", "dataset"}] * 6
    assert [r["instruction"] for r in exported] == [instruction_text(r) for r in rows]
    assert {r["generator"] for r in exported} == {"tiny"}
    annotations = json.loads((tmp_path / "tiny_outputs-annotations.json").read_text())
    assert [a["preference"] for a in annotations] == [1.0] * 6  # AlpacaEval: 1 = output_1 (the reference)
    assert "win rate of tiny vs the reference outputs" in capsys.readouterr().out


def test_reward_model_judges_reference_outputs_by_score():
    from cringe.reference import judge_outcomes

    class Longer:
        def score(self, prompts, completions):
            return [float(len(c)) for c in completions]

    assert judge_outcomes(Longer(), ["p"] * 3, ["aaaa", "a", "aa"], ["aa", "aaa", "aa"]) == [1.0, 0.0, 0.5]
    rows = [{"instruction": "i", "output": "ref", "generator": "g"}]
    assert annotation_rows(rows, ["mine"], [0.75], "me", "j")[0]["preference"] == 1.75


def test_evaluate_refuses_prompts_with_outputs_baseline(tmp_path):
    from cringe.cli import main

    reward = tmp_path / "r.yaml"
    reward.write_text("type: callable\nfunction: cringe.testbeds.toy:vowel_share\n")
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "evaluate",
                "--policy",
                "tiny-random-llama",
                "--baseline",
                FARM,
                "--reward",
                str(reward),
                "--prompts",
                FARM,
            ]
        )
    assert stop.value.code == 2
    with pytest.raises(UserError, match="answers each instruction once"):
        main(
            [
                "evaluate",
                "--policy",
                "tiny-random-llama",
                "--baseline",
                FARM,
                "--reward",
                str(reward),
                "--samples",
                "4",
                "--debug",
            ]
        )


def test_length_controlled_goes_through_alpaca_evals_own_glm(tmp_path, monkeypatch):
    """Our annotation rows in AlpacaEval's own GLM, where the package is installed. The Hub file it downloads
    (per-instruction difficulty and two gamed baselines) is replaced by a made-up one: this checks the interface
    (columns, preference coding), not a number. A policy that wins exactly when it is longer gets a length-controlled
    win rate below its raw one."""
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    import random

    import pandas as pd

    rng = random.Random(0)
    n = 805
    gamed = pd.DataFrame(
        [
            {
                "model": m,
                "index": i,
                "preference": rng.random(),
                "std_delta_len": rng.gauss(0, 1),
                "instruction_difficulty": rng.gauss(0, 1),
                "not_gamed_baseline": False,
            }
            for m in ("verbose", "concise")
            for i in range(n)
        ]
    )
    csv = tmp_path / "df_gamed.csv"
    gamed.to_csv(csv, index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(csv))
    rows = [{"instruction": f"q{i}", "output": "r" * 40, "generator": "reference"} for i in range(n)]
    outputs = ["p" * (80 if i % 2 else 10) for i in range(n)]
    outcomes = [1.0 if len(o) > 40 else 0.0 for o in outputs]  # wins exactly when longer
    lc = length_controlled(annotation_rows(rows, outputs, outcomes, "policy", "judge"), n)
    assert lc["computed"] is True, lc
    assert lc["alpaca_eval_win_rate"] == pytest.approx(sum(outcomes) / n, abs=1e-6)
    assert lc["length_controlled_win_rate"] < lc["alpaca_eval_win_rate"] - 0.02  # 0.447 against 0.499 here
