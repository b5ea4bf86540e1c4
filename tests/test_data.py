"""Dataset formats, validation errors (row + field), the tokenisation policy, and collation."""

import json

import pytest
import torch

from cringe.data import Collator, DataValidationError, detect_format, load_rows, prepare, validate
from cringe.losses import IGNORE_INDEX

from .conftest import chat

PAIR = {"prompt": "Hello", "chosen": " good answer", "rejected": " bad answer"}
CONV_PAIR = {
    "prompt": [chat("system", "Be nice."), chat("user", "Hi")],
    "chosen": [chat("assistant", "Hello there")],
    "rejected": [chat("assistant", "Go away")],
}


def completion_text(tokenizer, row_ids, batch, i):
    labels = batch["labels"][i]
    return tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())


# ----- formats -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["prompt", "chosen", "rejected"], "pairwise"),
        (["chosen", "rejected"], "implicit_pairwise"),
        (["prompt", "completion", "label"], "binary"),
        (["instruction", "input", "output_1", "output_2", "preference"], "alpacafarm"),
        (["prompt"], "prompt_only"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_unknown_columns_name_what_is_expected():
    with pytest.raises(ValueError, match="prompt, chosen, rejected"):
        detect_format(["question", "answer"])


def test_plain_pairwise_boundary_and_single_eos(tokenizer):
    data = prepare([PAIR], tokenizer, kind="pairwise")
    row = data[0]
    assert tokenizer.decode(row["prompt_ids"]) == "Hello"
    chosen, rejected = row["completion_ids"]
    assert tokenizer.decode(chosen) == " good answer<|im_end|>"
    assert chosen.count(tokenizer.eos_token_id) == 1 and rejected[-1] == tokenizer.eos_token_id
    batch = Collator(tokenizer.pad_token_id)(data.rows)
    assert batch["input_ids"].shape[0] == 2
    assert completion_text(tokenizer, row, batch, 0) == " good answer<|im_end|>"
    assert completion_text(tokenizer, row, batch, 1) == " bad answer<|im_end|>"
    # the first completion token sits right after the last prompt token
    first = (batch["labels"][0] != IGNORE_INDEX).nonzero()[0].item()
    assert first == len(row["prompt_ids"])


def test_conversational_pairwise_uses_chat_template_and_one_eos(tokenizer):
    data = prepare([CONV_PAIR], tokenizer, kind="pairwise")
    row = data[0]
    prompt = tokenizer.decode(row["prompt_ids"])
    assert prompt.endswith("<|im_start|>assistant\n") and "Be nice." in prompt
    chosen = tokenizer.decode(row["completion_ids"][0])
    assert chosen == "Hello there<|im_end|>"  # the template's end-of-turn is the EOS, not doubled
    assert row["completion_ids"][0].count(tokenizer.eos_token_id) == 1


def test_implicit_prompt_is_the_shared_prefix(tokenizer):
    rows = [{"chosen": "The film was great", "rejected": "The film was awful"},
            {"chosen": [chat("user", "Hi"), chat("assistant", "Hello")],
             "rejected": [chat("user", "Hi"), chat("assistant", "Bye")]}]
    data = prepare(rows[:1], tokenizer, kind="pairwise")
    assert tokenizer.decode(data[0]["prompt_ids"]) == "The film was"
    assert tokenizer.decode(data[0]["completion_ids"][0]) == " great<|im_end|>"
    data = prepare(rows[1:], tokenizer, kind="pairwise")
    assert tokenizer.decode(data[0]["completion_ids"][1]) == "Bye<|im_end|>"


def test_binary_format_and_conversion_from_pairs(tokenizer):
    rows = [{"prompt": "p", "completion": " ok", "label": True}, {"prompt": "q", "completion": " no", "label": False}]
    data = prepare(rows, tokenizer, kind="binary")
    batch = Collator(tokenizer.pad_token_id)(data.rows)
    assert batch["is_positive"].tolist() == [True, False]
    from_pairs = prepare([PAIR], tokenizer, kind="binary")
    assert [r["label"] for r in from_pairs.rows] == [True, False]
    sft = prepare(rows, tokenizer, kind="sft")
    assert len(sft) == 1  # only the good completion
    with pytest.raises(ValueError, match="needs pairs"):
        prepare(rows, tokenizer, kind="pairwise")


def test_alpacafarm_adapter(tokenizer):
    rows = [{"instruction": "Name a fruit.", "input": "", "output_1": "Rock", "output_2": "Apple", "preference": 2},
            {"instruction": "Add", "input": "2+2", "output_1": "4", "output_2": "5", "preference": 1}]
    examples, report = validate(load_rows(rows))
    assert report.format == "alpacafarm"
    assert examples[0].completions == ("Apple", "Rock") and examples[0].prompt == "Name a fruit."
    assert examples[1].prompt == "Add\n\n2+2" and examples[1].completions == ("4", "5")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_local_files(tmp_path, tokenizer, suffix):
    import datasets

    rows = [dict(PAIR, prompt=f"Hello {i}") for i in range(3)]
    path = tmp_path / f"data{suffix}"
    ds = datasets.Dataset.from_list(rows)
    {".jsonl": lambda: ds.to_json(path), ".json": lambda: path.write_text(json.dumps(rows)),
     ".parquet": lambda: ds.to_parquet(path), ".csv": lambda: ds.to_csv(path, index=False)}[suffix]()
    assert len(prepare(str(path), tokenizer, kind="pairwise")) == 3


def test_truncated_completion_gets_no_eos(tokenizer):
    data = prepare([PAIR], tokenizer, kind="pairwise", max_completion_length=4)
    chosen = data[0]["completion_ids"][0]
    assert len(chosen) == 4 and tokenizer.eos_token_id not in chosen


# ----- bad input -----------------------------------------------------------------------------------------------

BAD = [
    ([PAIR, {"prompt": "x", "chosen": "a"}], 1, "rejected", "missing"),
    ([PAIR, dict(PAIR, chosen="  ")], 1, "chosen", "empty"),
    ([PAIR, dict(PAIR, chosen=3)], 1, "chosen", "expected a string"),
    ([PAIR, PAIR, dict(PAIR, rejected=PAIR["chosen"])], 2, "rejected", "identical to chosen"),
    ([{"prompt": "p", "completion": "c", "label": "yes"}], 0, "label", "expected a boolean"),
    ([{"prompt": "p", "completion": "c", "label": 1}], 0, "label", "expected a boolean"),
    ([CONV_PAIR, dict(CONV_PAIR, chosen=[{"role": "assistant"}])], 1, "chosen", "not a {'role', 'content'}"),
    ([CONV_PAIR, dict(CONV_PAIR, chosen=[chat("assistant", 5)])], 1, "chosen", "content is not a string"),
    ([CONV_PAIR, dict(CONV_PAIR, chosen=[chat("robot", "hi")])], 1, "chosen", "unknown role 'robot'"),
    ([CONV_PAIR, dict(CONV_PAIR, chosen="plain text")], 1, "chosen", "mixed formats"),
    ([CONV_PAIR, dict(CONV_PAIR, chosen=[])], 1, "chosen", "expected a non-empty list"),
    ([PAIR, dict(PAIR, chosen=[chat("assistant", "x")])], 1, "chosen", "mixed formats"),
    ([{"instruction": "i", "input": "", "output_1": "a", "output_2": "b", "preference": 3}], 0, "preference", "1 or 2"),
]


@pytest.mark.parametrize("rows, row, fld, problem", BAD)
def test_bad_rows_name_row_and_field(tokenizer, rows, row, fld, problem):
    with pytest.raises(DataValidationError) as info:
        prepare(rows, tokenizer, kind="binary" if "label" in rows[0] else "pairwise")
    assert info.value.row == row and info.value.field == fld
    assert problem in str(info.value) and f"row {row}, field '{fld}'" in str(info.value)


def test_mixed_formats_in_a_jsonl_file_name_the_row(tmp_path, tokenizer):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [CONV_PAIR, CONV_PAIR, PAIR]) + "\n")
    with pytest.raises(DataValidationError, match=r"row 2, field 'prompt': a plain string .*mixed formats"):
        prepare(str(path), tokenizer, kind="pairwise")


def test_broken_jsonl_names_the_line(tmp_path, tokenizer):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(PAIR) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        prepare(str(path), tokenizer, kind="pairwise")


def test_prompt_longer_than_max_is_an_error_with_row(tokenizer):
    rows = [PAIR, dict(PAIR, prompt="x" * 100)]
    with pytest.raises(DataValidationError, match=r"row 1, field 'prompt': 100 tokens, longer than max_prompt_length=50"):
        prepare(rows, tokenizer, kind="pairwise", max_prompt_length=50)


def test_skip_mode_counts_and_keeps_the_good_rows(tokenizer, caplog):
    rows = [PAIR, dict(PAIR, chosen=""), dict(PAIR, rejected=PAIR["chosen"]), dict(PAIR, prompt="y" * 100), PAIR]
    data = prepare(rows, tokenizer, kind="pairwise", on_invalid="skip", max_prompt_length=50)
    assert [r["row"] for r in data.rows] == [0, 4]
    assert sum(data.report.skipped.values()) == 3 and data.report.kept == 2
    assert "skipped 2 invalid rows" in caplog.text  # validation skips are reported before tokenisation


def test_collator_pads_right_and_masks(tokenizer):
    rows = [PAIR, dict(PAIR, chosen=" a much longer good answer here")]
    data = prepare(rows, tokenizer, kind="pairwise")
    batch = Collator(tokenizer.pad_token_id)(data.rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all()
    n_completion = sum(len(c) for r in data.rows for c in r["completion_ids"])
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == n_completion
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor(
        [len(r["prompt_ids"]) + len(r["completion_ids"][j]) for j in range(2) for r in data.rows]))
