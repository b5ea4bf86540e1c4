"""Prompt sources at scale: NAME:SPLIT, preference rows read for their prompts, invalid prompts skipped by the
loop (and the stage) alike, and run directories made before that key still resuming."""

import json

import pytest

from cringe.data.formats import prompt_rows, split_source
from cringe.errors import UserError


def test_split_source():
    assert split_source("HuggingFaceH4/ultrafeedback_binarized:train_gen") == (
        "HuggingFaceH4/ultrafeedback_binarized",
        "train_gen",
    )
    assert split_source("org/name:test_gen[:500]") == ("org/name", "test_gen[:500]")
    assert split_source("org/name") == ("org/name", None)
    assert split_source("data/prompts.jsonl") == ("data/prompts.jsonl", None)
    assert split_source("C:/data/prompts.jsonl") == ("C:/data/prompts.jsonl", None)  # a path, not a split


def test_prompt_rows_take_chosen_before_the_answer():
    user = {"role": "user", "content": "Q?"}
    uf = [
        {
            "prompt": "Q?",
            "chosen": [user, {"role": "assistant", "content": "A"}],
            "rejected": [user, {"role": "assistant", "content": "A"}],
        }
    ]  # tied: no shared-prefix prompt
    assert prompt_rows(uf) == [{"prompt": [user]}]
    explicit = [
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}],
        }
    ]
    assert prompt_rows(explicit) is explicit  # a conversational prompt column is the prompt (TRL's rule)
    plain = [{"prompt": "Q?", "chosen": "A", "rejected": "B"}]
    assert prompt_rows(plain) is plain


def test_a_missing_local_file_is_still_named(tokenizer, tmp_path):
    from cringe.data import load_prompts

    with pytest.raises(UserError, match="no such file"):
        load_prompts(str(tmp_path / "absent.jsonl"), tokenizer)


def test_loop_skips_long_prompts_when_asked_and_old_runs_still_resume(tmp_path, tokenizer):
    from cringe.loop import IterateConfig, IterativeRun

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "x" * n}]}) + "\n" for n in (5, 400, 6)))
    common = dict(
        model="tiny-random-llama",
        prompts=str(path),
        output_dir=str(tmp_path / "run"),
        reward={"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
        max_prompt_length=64,
        device="cpu",
        train={"use_cpu": True},
    )
    strict = IterateConfig(**common)
    with pytest.raises(UserError, match="row 1, field 'prompt'"):
        IterativeRun(strict).prompts()
    lenient = IterateConfig(**common, skip_invalid_prompts=True)
    assert [p.messages[0]["content"] for p in IterativeRun(lenient).prompts()] == ["x" * 5, "x" * 6]
    assert "skip_invalid_prompts" not in strict.result_dict()  # a run made before the key hashes as it did
    assert lenient.result_hash() != strict.result_hash()
