"""Rewards that read the prompt rows' other columns: reward functions called the way TRL's GRPOTrainer calls them,
None read as "no reward", IFEval-format prompt rows, and the instructions reward with its stored labels."""

import json
import logging

import pytest

from cringe.data import load_prompts
from cringe.errors import UserError
from cringe.generation import Sample
from cringe.loop.pairing import best_vs_worst, training_rows
from cringe.loop.rundir import RunDir
from cringe.loop.stages import score_records, score_to_file, with_prompt_text
from cringe.rewards import CallableReward, check_prompts, load_reward_source

from .conftest import chat


def sample(prompt_id, sample_id, completion, *, ids=None, prompt="Q", messages=None, columns=None, reason="stop"):
    return Sample(
        prompt_id=prompt_id,
        sample_id=sample_id,
        prompt_ids=[1, 2],
        completion_ids=ids if ids is not None else [10 + sample_id, 2],
        completion=completion,
        finish_reason=reason,
        prompt=prompt,
        prompt_messages=messages,
        columns=columns,
    )


def positional(prompts, completions, bonus=0.0):
    return [float(len(c)) + bonus for c in completions]


def matches_target(completions, target, **kwargs):
    """A GRPO-style reward: 1 when the completion (text, or an assistant message) contains the row's target."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if t in text else 0.0 for text, t in zip(texts, target)]


# ----- the calling convention --------------------------------------------------------------------------------------
def test_a_function_without_kwargs_keeps_the_positional_form():
    seen = {}

    def old(prompts, completions):
        seen["args"] = (prompts, completions)
        return [1.0] * len(completions)

    reward = CallableReward(old)
    assert not reward.trl_style
    records = reward.score_samples([sample(0, 0, "a", prompt="hi", messages=[chat("user", "hi")], columns={"x": 1})])
    assert records == [{"score": 1.0}]
    assert seen["args"] == (["hi"], ["a"])  # text prompts, text completions, no columns
    # the config's kwargs reach it as keywords, as functools.partial did
    assert load_reward_source(
        {"type": "callable", "function": f"{__name__}:positional", "kwargs": {"bonus": 0.5}}
    ).score(["p"], ["abc"]) == [3.5]


def test_a_kwargs_function_is_called_the_trl_way():
    got = {}

    def grpo(prompts, completions, completion_ids, **kwargs):
        got.update(prompts=prompts, completions=completions, completion_ids=completion_ids, kwargs=kwargs)
        return [0.5, 0.25]

    messages = [chat("system", "Be brief."), chat("user", "Name a colour.")]
    samples = [
        sample(0, 0, "Red", ids=[7, 8, 2], prompt="Name a colour.", messages=messages, columns={"answer": "red"}),
        sample(1, 0, "Blue", ids=[9, 2], prompt="Say blue.", columns={"answer": "blue"}),
    ]
    assert [r["score"] for r in CallableReward(grpo).score_samples(samples)] == [0.5, 0.25]
    # chat prompt: its messages, and the completion as one assistant message; text prompt: text both ways
    assert got["prompts"] == [messages, "Say blue."]
    assert got["completions"] == [[{"role": "assistant", "content": "Red"}], "Blue"]
    assert got["completion_ids"] == [[7, 8, 2], [9, 2]]
    assert got["kwargs"]["answer"] == ["red", "blue"]  # one value per completion, as TRL repeats the row's columns
    assert callable(got["kwargs"]["log_extra"]) and callable(got["kwargs"]["log_metric"])
    assert "trainer_state" not in got["kwargs"]  # documented: no trainer while the loop scores


def test_a_column_named_in_the_signature_is_passed_and_a_missing_one_is_named():
    samples = [sample(0, 0, "the cat sat", columns={"target": "cat"}), sample(0, 1, "dog", columns={"target": "cat"})]
    assert [r["score"] for r in CallableReward(matches_target).score_samples(samples)] == [1.0, 0.0]
    old_file = [sample(0, 0, "cat")]  # written before samples carried their prompt's columns
    with pytest.raises(UserError, match="needs target.*sample them again"):
        CallableReward(matches_target).score_samples(old_file)


def test_a_column_that_clashes_with_trl_arguments_is_refused():
    def fn(completions, **kwargs):
        return [1.0] * len(completions)

    with pytest.raises(UserError, match=r"column\(s\) \['completions'\] clash"):
        CallableReward(fn).score_samples([sample(0, 0, "a", columns={"completions": "x"})])


def test_none_is_no_reward_and_nan_still_an_error():
    def some_none(completions, **kwargs):
        return [None if c == "skip" else 1.0 for c in completions]

    reward = CallableReward(some_none)
    assert [r["score"] for r in reward.score_samples([sample(0, 0, "skip"), sample(0, 1, "x")])] == [None, 1.0]
    with pytest.raises(UserError, match="non-finite"):
        CallableReward(lambda completions, **kw: [float("nan")]).score_samples([sample(0, 0, "a")])
    with pytest.raises(UserError, match="must return a list"):
        CallableReward(lambda completions, **kw: 1.0).score_samples([sample(0, 0, "a")])


def test_log_extra_lands_in_the_scores_file_and_log_metric_is_logged(tmp_path, caplog):
    def logging_reward(completions, log_extra, log_metric, **kwargs):
        log_extra("length", [len(c) for c in completions])
        log_metric("mean_length", sum(map(len, completions)) / len(completions))
        return [None, 2.0]

    samples = [sample(0, 0, "ab"), sample(0, 1, "abcd")]
    out = tmp_path / "scores.jsonl"
    with caplog.at_level(logging.INFO, logger="cringe.rewards.sources"):
        assert score_to_file(CallableReward(logging_reward), samples, out) == [None, 2.0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"prompt_id": 0, "sample_id": 0, "score": None, "log_extra": {"length": 2}},
        {"prompt_id": 0, "sample_id": 1, "score": 2.0, "log_extra": {"length": 4}},
    ]
    assert "mean_length = 3" in caplog.text
    assert RunDir.scores(out, samples=tmp_path / "absent.jsonl") == [None, 2.0]
    assert RunDir.labels(out, samples=tmp_path / "absent.jsonl") is None


def test_an_async_reward_function_is_awaited():
    async def judged(completions, **kwargs):
        return [float(len(c)) for c in completions]

    assert [r["score"] for r in CallableReward(judged).score_samples([sample(0, 0, "abc")])] == [3.0]


# ----- None in pairing ---------------------------------------------------------------------------------------------
def test_pairing_leaves_out_samples_without_a_reward(caplog):
    samples = [sample(p, s, f"c{p}{s}") for p in range(3) for s in range(3)]
    scores = [1.0, None, 0.0, None, None, None, 0.5, None, None]
    rows, report = best_vs_worst(samples, scores)
    assert [r["row"] for r in rows] == [0]  # prompt 1 has no reward at all; prompt 2 has one rewarded sample
    # prompt 1 is counted once, as a prompt without any reward; prompt 2 has one sample left
    assert report.dropped == {"no reward for any sample": 1, "sample without a reward": 6, "fewer than 2 samples": 1}
    with caplog.at_level(logging.INFO, logger="cringe.loop.pairing"):
        rows, report = training_rows(samples, scores, "binary", name="round-1")
    # the threshold is just above the mean of the rewarded samples (0.5), so 1.0 is good and 0.0 and 0.5 bad
    assert sorted((r["row"], r["label"]) for r in rows) == [(0, False), (0, True), (2, False)]
    assert "round-1: 6 of 9 samples got no reward (None)" in caplog.text
    assert any(r.levelno == logging.WARNING and "no reward" in r.getMessage() for r in caplog.records)


def test_binary_pairing_takes_the_stored_labels_over_the_threshold():
    samples = [sample(0, s, f"c{s}") for s in range(3)]
    rows, _ = training_rows(samples, [0.9, 0.8, 0.1], "binary", binary_threshold=0.5, labels=[False, True, None])
    assert [(r["completion"], r["label"]) for r in rows] == [("c0", False), ("c1", True)]


# ----- prompt rows' columns ----------------------------------------------------------------------------------------
IFEVAL_ROWS = [
    {
        "key": 1000,
        "prompt": "Write a short note about owls. Do not use any commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    },
    {
        "key": 1001,
        "prompt": "Describe the moon in lower case only. End with 'That is all.'",
        "instruction_id_list": ["change_case:english_lowercase", "startend:end_checker"],
        "kwargs": [{}, {"end_phrase": "That is all."}],
    },
]


def test_load_prompts_keeps_ifeval_columns_and_samples_carry_them(tokenizer, tmp_path):
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS))
    prompts = load_prompts(str(path), tokenizer)
    assert prompts[1].text == IFEVAL_ROWS[1]["prompt"]
    assert prompts[1].columns == {k: v for k, v in IFEVAL_ROWS[1].items() if k != "prompt"}
    assert load_prompts([{"prompt": "plain"}], tokenizer)[0].columns is None
    # a samples file written before samples carried columns still loads, and gets them from the prompts
    old = sample(1, 0, "x").to_dict()
    del old["columns"]
    restored = with_prompt_text([Sample.from_dict(old)], prompts)[0]
    assert restored.columns["instruction_id_list"] == IFEVAL_ROWS[1]["instruction_id_list"]


def test_the_instructions_reward_stores_labels_and_per_instruction_results(tokenizer):
    pytest.importorskip("if_verifiable")
    prompts = load_prompts(IFEVAL_ROWS, tokenizer)
    reward = load_reward_source({"type": "instructions"})
    samples = [
        sample(1, 0, "the moon is bright. that is all.", prompt=prompts[1].text, columns=prompts[1].columns),
        sample(1, 1, "The Moon is bright. That is all.", prompt=prompts[1].text, columns=prompts[1].columns),
    ]
    records = score_records(reward, samples)
    assert [r["score"] for r in records] == [1.0, 0.5]
    assert [r["label"] for r in records] == [True, False]
    assert records[1]["instructions"]["strict"] == [False, True]
    with pytest.raises(UserError, match="no instruction_id_list or kwargs column"):
        score_records(reward, [sample(0, 0, "x")])
    with pytest.raises(UserError, match="strict must be true or false"):
        load_reward_source({"type": "instructions", "strict": "yes"})


def test_malformed_instruction_rows_are_refused_before_sampling(tokenizer):
    pytest.importorskip("if_verifiable")
    bad = [dict(IFEVAL_ROWS[1], kwargs=[{}, {"end_phrase": "x", "typo": 1}])]
    with pytest.raises(UserError, match=r"kwargs\[1\].*unknown typo"):
        check_prompts({"type": "instructions"}, load_prompts(bad, tokenizer))
    with pytest.raises(UserError, match="prompt 0: no instruction_id_list or kwargs column"):
        check_prompts({"type": "instructions"}, load_prompts([{"prompt": "plain"}], tokenizer))
    check_prompts({"type": "callable", "function": "x:y"}, load_prompts([{"prompt": "plain"}], tokenizer))


# ----- inside `cringe iterate` ---------------------------------------------------------------------------------------
def share_of_target_letters(completions, target, completion_ids, **kwargs):
    """A GRPO reward function as TRL users write them: reads the prompt row's `target` column; a completion with
    no letters gets no reward (None)."""
    assert len(completion_ids) == len(completions)
    out = []
    for completion, letters in zip(completions, target):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        seen = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in letters for ch in seen) / len(seen) if seen else None)
    return out


def iterate_config(tmp_path, rows, reward, **overrides):
    from cringe.loop.run import load_config

    from .test_loop import write_config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_config(
        tmp_path, tmp_path / "run", prompts=str(prompts), eval_prompts=None, rounds=1, reward=reward, **overrides
    )
    return load_config(str(path), [])


def test_a_grpo_reward_function_reads_a_column_inside_iterate(tmp_path):
    from cringe.loop.run import IterativeRun

    rows = [
        {"prompt": [chat("user", f"Say something about item {i}.")], "target": "aeiou" if i % 2 else "xyzkq"}
        for i in range(8)
    ]
    reward = {"type": "callable", "function": f"{__name__}:share_of_target_letters"}
    IterativeRun(iterate_config(tmp_path, rows, reward)).run()
    round_dir = tmp_path / "run" / "round-1"
    samples = [json.loads(line) for line in (round_dir / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["columns"] == {"target": "xyzkq"} and samples[-1]["columns"] == {"target": "aeiou"}
    scores = RunDir.scores(round_dir / "scores.jsonl")
    expected = share_of_target_letters(
        [[{"role": "assistant", "content": s["completion"]}] for s in samples],
        [s["columns"]["target"] for s in samples],
        [s["completion_ids"] for s in samples],
    )
    assert scores == pytest.approx(expected) and any(r is not None for r in scores)
    pairing = json.loads((round_dir / "pairing.json").read_text())
    assert pairing["kept"] >= 1
    assert pairing["dropped"].get("sample without a reward", 0) == scores.count(None)
    assert (round_dir / "model" / "model.safetensors").exists()


def test_iterate_refuses_malformed_instruction_rows_before_sampling(tmp_path):
    from cringe.loop.run import IterativeRun

    pytest.importorskip("if_verifiable")
    rows = [
        IFEVAL_ROWS[0],
        dict(IFEVAL_ROWS[1], instruction_id_list=["startend:no_such_check", "punctuation:no_comma"]),
    ]
    config = iterate_config(tmp_path, rows, {"type": "instructions"})
    with pytest.raises(UserError, match=r"row 1 \(key 1001\), field 'instruction_id_list\[0\]'"):
        IterativeRun(config).run()
    assert not (tmp_path / "run" / "round-1" / "samples.jsonl").exists()
    assert not list((tmp_path / "run").glob("round-1/.samples-shards/*"))


def test_binary_cringe_pairs_by_the_instruction_labels_inside_iterate(tmp_path):
    from cringe.loop.run import IterativeRun

    pytest.importorskip("if_verifiable")
    rows = [dict(IFEVAL_ROWS[i % 2], key=i) for i in range(6)]
    IterativeRun(iterate_config(tmp_path, rows, {"type": "instructions"}, loss="binary_cringe")).run()
    round_dir = tmp_path / "run" / "round-1"
    scored = [json.loads(line) for line in (round_dir / "scores.jsonl").read_text().splitlines()]
    assert {"score", "label", "instructions", "words"} <= set(scored[0])
    labels = {(r["prompt_id"], r["sample_id"]): r["label"] for r in scored}
    samples = [json.loads(line) for line in (round_dir / "samples.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (round_dir / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(samples)
    by_completion = {(s["prompt_id"], s["completion"]): labels[s["prompt_id"], s["sample_id"]] for s in samples}
    assert all(p["label"] == by_completion[p["row"], p["completion"]] for p in pairs)


def test_cringe_score_reads_the_instructions_from_the_samples_file_alone(tmp_path):
    from cringe.cli import main

    pytest.importorskip("if_verifiable")
    prompts, samples, scores = tmp_path / "ifeval.jsonl", tmp_path / "samples.jsonl", tmp_path / "scores.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS))
    main(["sample", "--model", "tiny-random-llama", "--prompts", str(prompts), "--output", str(samples)]
         + ["--n", "2", "--max-new-tokens", "5", "--device", "cpu"])  # fmt: skip
    drawn = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["columns"]["key"] for r in drawn] == [1000, 1000, 1001, 1001]
    prompts.unlink()  # scoring needs nothing but the samples
    reward = tmp_path / "reward.yaml"
    reward.write_text("type: instructions\nstrict: true\n")
    main(["score", "--samples", str(samples), "--reward", str(reward), "--output", str(scores)])
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [r["instructions"]["instruction_id_list"] for r in rows] == [
        r["columns"]["instruction_id_list"] for r in drawn
    ]
    assert all(r["score"] == sum(r["instructions"]["strict"]) / len(r["instructions"]["strict"]) for r in rows)


def test_prompt_rows_given_as_dicts_may_leave_a_column_out(tokenizer):
    # A Python list of rows whose keys differ (IFEval rows beside plain ones): a column a row lacks reads as None,
    # as Arrow fills it when the rows come from a file.
    prompts = load_prompts([{"prompt": "a", "target": "x"}, {"prompt": "b"}], tokenizer)
    assert [p.columns for p in prompts] == [{"target": "x"}, {"target": None}]
