"""Dataset formats, validation errors (row + field), the tokenisation policy, and collation."""

import json

import pytest
import torch

from cringe.data import Collator, DataValidationError, detect_format, load_prompts, load_rows, prepare, validate
from cringe.data import formats as F
from cringe.data import tokenize as T
from cringe.errors import UserError
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
        (["prompt", "completion"], "prompt_completion"),
        (["messages"], "messages"),
        (["text"], "text"),
        # ultrafeedback_binarized: its `messages` column does not make it SFT data
        (["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"], "pairwise"),
        (["chosen", "rejected", "messages"], "implicit_pairwise"),
        (["prompt", "completion", "label", "messages"], "binary"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_unknown_columns_name_what_is_expected():
    with pytest.raises(UserError, match="prompt, chosen, rejected"):
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
    rows = [
        {"chosen": "The film was great", "rejected": "The film was awful"},
        {
            "chosen": [chat("user", "Hi"), chat("assistant", "Hello")],
            "rejected": [chat("user", "Hi"), chat("assistant", "Bye")],
        },
    ]
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
    rows = [
        {"instruction": "Name a fruit.", "input": "", "output_1": "Rock", "output_2": "Apple", "preference": 2},
        {"instruction": "Add", "input": "2+2", "output_1": "4", "output_2": "5", "preference": 1},
    ]
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
    {
        ".jsonl": lambda: ds.to_json(path),
        ".json": lambda: path.write_text(json.dumps(rows)),
        ".parquet": lambda: ds.to_parquet(path),
        ".csv": lambda: ds.to_csv(path, index=False),
    }[suffix]()
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
    with pytest.raises(
        DataValidationError, match=r"row 1, field 'prompt': 100 tokens, longer than max_prompt_length=50"
    ):
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
    assert torch.equal(
        batch["attention_mask"].sum(1),
        torch.tensor([len(r["prompt_ids"]) + len(r["completion_ids"][j]) for j in range(2) for r in data.rows]),
    )


def test_data_errors_are_user_errors(tmp_path, tokenizer):
    assert issubclass(DataValidationError, UserError) and issubclass(UserError, ValueError)
    import pickle

    err = pickle.loads(pickle.dumps(DataValidationError(3, "chosen", "empty")))  # crosses worker processes
    assert (err.row, err.field, str(err)) == (3, "chosen", "row 3, field 'chosen': empty")
    with pytest.raises(UserError, match="has no rows"):
        prepare([], tokenizer, kind="pairwise")
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        (tmp_path / "data.txt").write_text("x")
        prepare(str(tmp_path / "data.txt"), tokenizer, kind="pairwise")
    with pytest.raises(UserError, match="on_invalid must be"):
        prepare([PAIR], tokenizer, kind="pairwise", on_invalid="ignore")
    with pytest.raises(UserError, match="no valid rows left"):
        prepare([dict(PAIR, chosen="")], tokenizer, kind="pairwise", on_invalid="skip")


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.json", "missing.parquet", "missing.csv"])
def test_a_missing_local_file_is_named_not_looked_up_on_the_hub(tmp_path, tokenizer, monkeypatch, name):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("a missing local file must not reach datasets.load_dataset")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    path = tmp_path / "sub" / name
    with pytest.raises(UserError, match=f"{path}: no such file"):
        prepare(str(path), tokenizer, kind="pairwise")


# ----- TRL's formats: ultrafeedback_binarized, SFT ---------------------------------------------------------------


def ultrafeedback_row(i, answer=None):
    """A row shaped like HuggingFaceH4/ultrafeedback_binarized: a string prompt, chosen/rejected conversations
    that repeat the user turn, and the dataset's extra columns."""
    question = f"Question {i}: what is {i} + {i}?"
    good, bad = answer or f"It is {2 * i}.", f"Maybe {i}?"
    return {
        "prompt": question,
        "prompt_id": f"{i:064x}",
        "chosen": [chat("user", question), chat("assistant", good)],
        "rejected": [chat("user", question), chat("assistant", bad)],
        "messages": [chat("user", question), chat("assistant", good)],
        "score_chosen": 8.5,
        "score_rejected": 3.0,
    }


def explicit_row(i, answer=None):
    """The same data as `ultrafeedback_row(i)` in explicit conversational prompt/chosen/rejected form."""
    row = ultrafeedback_row(i, answer)
    return {"prompt": row["chosen"][:1], "chosen": row["chosen"][1:], "rejected": row["rejected"][1:]}


def ids(data):
    return [(r["prompt_ids"], r["completion_ids"], r["label"]) for r in data.rows]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_ultrafeedback_format_tokenises_like_its_explicit_form(tmp_path, tokenizer, suffix):
    import datasets

    rows = [ultrafeedback_row(i) for i in range(4)]
    path = tmp_path / f"ultrafeedback{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(path)
    data = prepare(str(path), tokenizer, kind="pairwise")
    expected = prepare([explicit_row(i) for i in range(4)], tokenizer, kind="pairwise")
    assert ids(data) == ids(expected)
    assert (
        tokenizer.decode(data[0]["prompt_ids"])
        == "<|im_start|>user\nQuestion 0: what is 0 + 0?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(data[0]["completion_ids"][0]) == "It is 0.<|im_end|>"
    assert data.report.format == "pairwise" and data.report.conversational
    # SFT on ultrafeedback trains on chosen, not on the extra `messages` column taken as SFT data
    assert [r["completion_ids"] for r in prepare(str(path), tokenizer, kind="sft").rows] == [
        r["completion_ids"][:1] for r in expected.rows
    ]


def test_prompt_rule_matches_trl_maybe_extract_prompt():
    data_utils = pytest.importorskip("trl.data_utils")
    rows = [
        ultrafeedback_row(0),  # string prompt, conversational chosen: extracted
        explicit_row(1),  # both conversational: kept
        PAIR,  # both strings: kept
        {"prompt": [chat("user", "ignored")], "chosen": "The film was great", "rejected": "The film was awful"},
        {
            "prompt": [chat("user", "Q")],
            "chosen": [chat("user", "Q"), chat("assistant", "A")],
            "rejected": [chat("user", "Q"), chat("assistant", "B")],
        },  # kept, and chosen repeats the prompt, as in TRL
    ]
    for i, row in enumerate(rows):
        (ex,), _ = validate([row])
        trl = data_utils.maybe_extract_prompt(dict(row))
        assert (ex.prompt, list(ex.completions)) == (trl["prompt"], [trl["chosen"], trl["rejected"]]), i


def test_messages_sft_trains_the_last_assistant_turn(tokenizer):
    conversation = [
        chat("system", "Be brief."),
        chat("user", "Hi"),
        chat("assistant", "Hello"),
        chat("user", "Bye?"),
        chat("assistant", "Bye!"),
    ]
    data = prepare([{"messages": conversation}], tokenizer, kind="sft")
    same = prepare([{"prompt": conversation[:-1], "completion": conversation[-1:]}], tokenizer, kind="sft")
    assert ids(data) == ids(same)
    prompt = tokenizer.decode(data[0]["prompt_ids"])
    assert prompt.startswith("<|im_start|>system\nBe brief.") and "Hello<|im_end|>" in prompt  # earlier turns: context
    assert prompt.endswith("<|im_start|>assistant\n")
    assert [tokenizer.decode(c) for c in data[0]["completion_ids"]] == ["Bye!<|im_end|>"]
    with pytest.raises(DataValidationError, match=r"row 1, field 'messages': the last message is from 'user'"):
        prepare([{"messages": conversation}, {"messages": conversation[:-1]}], tokenizer, kind="sft")
    with pytest.raises(DataValidationError, match=r"row 0, field 'messages': expected a list of chat messages"):
        prepare([{"messages": "Hi"}], tokenizer, kind="sft")


def test_text_sft_trains_every_token_after_a_start_token(tokenizer):
    data = prepare([{"text": "Once upon a time."}, {"text": "The end."}], tokenizer, kind="sft")
    assert data[0]["prompt_ids"] == [tokenizer.bos_token_id]  # the tiny tokenizer adds no start token itself
    assert tokenizer.decode(data[0]["completion_ids"][0]) == "Once upon a time.<|im_end|>"
    batch = Collator(tokenizer.pad_token_id)(data.rows)
    assert completion_text(tokenizer, None, batch, 1) == "The end.<|im_end|>"
    with pytest.raises(DataValidationError, match=r"row 1, field 'text': empty"):
        prepare([{"text": "a"}, {"text": " "}], tokenizer, kind="sft")
    with pytest.raises(UserError, match="no prompts"):
        load_prompts([{"text": "a"}], tokenizer)


def test_prompt_completion_sft_standard_and_conversational(tokenizer):
    plain = prepare([{"prompt": "Hello", "completion": " good answer"}], tokenizer, kind="sft")
    assert ids(plain) == ids(prepare([PAIR], tokenizer, kind="sft"))
    conv = prepare([{"prompt": CONV_PAIR["prompt"], "completion": CONV_PAIR["chosen"]}], tokenizer, kind="sft")
    assert ids(conv) == ids(prepare([CONV_PAIR], tokenizer, kind="sft"))
    prompts = load_prompts([{"messages": [chat("user", "Hi"), chat("assistant", "Yo")]}], tokenizer)
    assert [p.text for p in prompts] == ["Hi"]


@pytest.mark.parametrize(
    "rows", [[{"prompt": "p", "completion": "c"}], [{"messages": [chat("assistant", "a")]}], [{"text": "t"}]]
)
def test_sft_data_cannot_serve_pairwise_or_binary_losses(tokenizer, rows):
    with pytest.raises(UserError, match="needs pairs"):
        prepare(rows, tokenizer, kind="pairwise")
    with pytest.raises(UserError, match="binary Cringe needs labelled completions"):
        prepare(rows, tokenizer, kind="binary")


# ----- message fields beyond role and content --------------------------------------------------------------------

TOOL_CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
TOOL_CHAT = [
    chat("user", "What is 2+2?"),
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "content": "4", "tool_call_id": "call_0"},
    chat("assistant", "4."),
]

# ChatML that also renders tool calls and tool results' ids, as tool-aware templates do
TOOL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% for call in message.tool_calls or [] %}<tool_call>{{ call['function'] | tojson }}</tool_call>{% endfor %}"
    "{% if message.tool_call_id %} [{{ message.tool_call_id }}]{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def tool_tokenizer():
    from cringe.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    return tok


def test_tool_calls_are_passed_to_a_template_that_renders_them(tool_tokenizer):
    (ex,), _ = validate([{"messages": TOOL_CHAT}])
    assert ex.prompt[1]["tool_calls"] == [TOOL_CALL] and ex.prompt[2]["tool_call_id"] == "call_0"  # nothing dropped
    data = prepare([{"messages": TOOL_CHAT}], tool_tokenizer, kind="sft")
    prompt = tool_tokenizer.decode(data[0]["prompt_ids"])
    assert '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}</tool_call>' in prompt and "4 [call_0]" in prompt
    # the tool call as the trained completion
    data = prepare([{"prompt": TOOL_CHAT[:1], "completion": TOOL_CHAT[1:2]}], tool_tokenizer, kind="sft")
    assert tool_tokenizer.decode(data[0]["completion_ids"][0]).startswith("<tool_call>")


@pytest.mark.parametrize(
    "rows, fld, index, key",
    [
        ([{"messages": TOOL_CHAT}], "messages", 1, "tool_calls"),  # in the prompt part of the conversation
        ([{"prompt": TOOL_CHAT[:1], "completion": TOOL_CHAT[1:2]}], "completion", 0, "tool_calls"),
        ([{"chosen": TOOL_CHAT[:2], "rejected": TOOL_CHAT[:1] + [chat("assistant", "5")]}], "chosen", 1, "tool_calls"),
        (
            [{"messages": [{"role": "user", "content": "Hi", "name": "Ann"}, chat("assistant", "Hi Ann")]}],
            "messages",
            0,
            "name",
        ),
    ],
)
def test_a_field_the_template_does_not_render_is_refused_not_dropped(tokenizer, rows, fld, index, key):
    kind = "sft" if "chosen" not in rows[0] else "pairwise"
    with pytest.raises(
        DataValidationError,
        match=rf"row 0, field '{fld}': message {index} has a '{key}' field that "
        "the tokenizer's chat template does not render",
    ):
        prepare(rows, tokenizer, kind=kind)


def test_none_valued_message_fields_are_absent(tokenizer):
    # Arrow gives every message each key any message of the column has, with None where it had none
    padded = [dict(m, name=None, tool_calls=None) for m in CONV_PAIR["prompt"]]
    assert ids(prepare([dict(CONV_PAIR, prompt=padded)], tokenizer, kind="pairwise")) == ids(
        prepare([CONV_PAIR], tokenizer, kind="pairwise")
    )
    with pytest.raises(DataValidationError, match=r"row 0, field 'chosen': message 0 content is not a string"):
        prepare([dict(CONV_PAIR, chosen=[{"role": "assistant", "content": None}])], tokenizer, kind="pairwise")


# ----- large datasets: Dataset.map, in parallel and cached -----------------------------------------------------


def on_disk(tmp_path, rows, name="dataset"):
    """A file-backed Dataset (as from load_dataset), so that map results are cached next to it in tmp_path."""
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / name))
    return datasets.load_from_disk(str(tmp_path / name))


LONG = "a long answer that will be cut " * 3
MAP_CASES = {
    "ultrafeedback-pairwise": ([ultrafeedback_row(i, LONG if i % 5 == 0 else None) for i in range(30)], "pairwise"),
    "ultrafeedback-binary": ([ultrafeedback_row(i) for i in range(30)], "binary"),
    "plain-sft": ([dict(PAIR, prompt=f"Hello {i}") for i in range(30)], "sft"),
    "messages-sft": (
        [{"messages": [chat("user", f"Hi {i}"), chat("assistant", "Hello" * (i % 4 + 1))]} for i in range(30)],
        "sft",
    ),
    "text-sft": ([{"text": f"Line {i}. " * (i % 3 + 1)} for i in range(30)], "sft"),
    "binary-sft": ([{"prompt": f"p{i}", "completion": f" c{i}", "label": i % 3 > 0} for i in range(30)], "sft"),
}


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_map_path_gives_the_per_row_token_ids(tmp_path, tokenizer, case):
    rows, kind = MAP_CASES[case]
    expected = prepare(rows, tokenizer, kind=kind, max_completion_length=40)
    data = prepare(
        on_disk(tmp_path, rows),
        tokenizer,
        kind=kind,
        max_completion_length=40,
        num_proc=2 if case == "ultrafeedback-pairwise" else 1,
    )
    assert data.rows == expected.rows and data.kind == expected.kind
    assert (data.report.kept, data.report.format) == (expected.report.kept, expected.report.format)


def test_map_path_reports_the_same_errors(tmp_path, tokenizer):
    rows = [dict(PAIR, prompt=f"Hello {i}") for i in range(30)]
    rows[5] = dict(PAIR, prompt="x" * 100)  # fails at tokenisation
    rows[23] = dict(PAIR, rejected=PAIR["chosen"])  # fails at validation, which runs first
    rows[26] = dict(PAIR, chosen=None)
    dataset = on_disk(tmp_path, rows)
    for num_proc in (1, 2):
        with pytest.raises(DataValidationError) as per_row:
            prepare(rows, tokenizer, kind="pairwise", max_prompt_length=50)
        with pytest.raises(DataValidationError) as mapped:
            prepare(dataset, tokenizer, kind="pairwise", max_prompt_length=50, num_proc=num_proc)
        assert str(mapped.value) == str(per_row.value) == "row 23, field 'rejected': identical to chosen"
    with pytest.raises(DataValidationError, match=r"row 5, field 'prompt': 100 tokens, longer than max_prompt_len"):
        prepare(on_disk(tmp_path, rows[:20], "first20"), tokenizer, kind="pairwise", max_prompt_length=50, num_proc=2)
    skipped = prepare(dataset, tokenizer, kind="binary", max_prompt_length=50, on_invalid="skip", num_proc=2)
    expected = prepare(rows, tokenizer, kind="binary", max_prompt_length=50, on_invalid="skip")
    assert skipped.rows == expected.rows and [r["row"] for r in skipped.rows].count(5) == 0
    assert (skipped.report.skipped, skipped.report.kept) == (expected.report.skipped, expected.report.kept)


def test_map_results_are_cached_per_tokenizer_and_settings(tmp_path, tokenizer, monkeypatch):
    dataset = on_disk(tmp_path, [ultrafeedback_row(i) for i in range(20)])
    first = prepare(dataset, tokenizer, kind="pairwise", num_proc=1)

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(T, "_validate_batch", must_not_run)
    monkeypatch.setattr(T, "_tokenize_rows", must_not_run)
    assert prepare(dataset, tokenizer, kind="pairwise", num_proc=1).rows == first.rows
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: another cache entry
        prepare(dataset, tokenizer, kind="pairwise", num_proc=1, max_completion_length=5)
    monkeypatch.setattr(T, "_validate_batch", T.__dict__["_validate_batch"])
    other = T.__dict__["_source_hash"]
    monkeypatch.setattr(T, "_source_hash", lambda: "edited")  # changed code: another cache entry
    with pytest.raises(AssertionError, match="recomputed"):
        prepare(dataset, tokenizer, kind="pairwise", num_proc=1)
    monkeypatch.setattr(T, "_source_hash", other)
    from cringe.models import build_tiny_tokenizer

    another = build_tiny_tokenizer()
    another.chat_template = TOOL_TEMPLATE
    with pytest.raises(AssertionError, match="recomputed"):  # another tokenizer or template: another cache entry
        prepare(dataset, another, kind="pairwise", num_proc=1)


def test_large_inputs_take_the_map_path_and_small_lists_do_not(tmp_path, tokenizer, monkeypatch):
    import datasets

    calls = []
    real = T._prepare_with_map
    monkeypatch.setattr(T, "_prepare_with_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(T, "MAP_MIN_ROWS", 10)
    monkeypatch.setattr(F, "ARROW_JSON_MIN_BYTES", 0)
    rows = [ultrafeedback_row(i) for i in range(12)]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert isinstance(load_rows(str(path)), datasets.Dataset)  # a large JSON file is read through Arrow (cached)
    assert ids(prepare(str(path), tokenizer, kind="pairwise")) == ids(prepare(rows, tokenizer, kind="pairwise"))
    assert calls == [1]  # the file, not the list
    prepare(on_disk(tmp_path, rows[:9]), tokenizer, kind="pairwise")
    assert calls == [1]  # fewer rows than MAP_MIN_ROWS
    path.write_text(json.dumps(PAIR) + "\n{not json\n")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):  # still named when Arrow cannot read it
        load_rows(str(path))


def test_trainer_tokenises_with_dataset_num_proc_and_trains_on_messages(tmp_path, tokenizer, monkeypatch):
    from cringe.models import build_tiny_model
    from cringe.trainer import CringeConfig, CringeTrainer

    seen = []
    real = T._prepare_with_map
    monkeypatch.setattr(T, "_prepare_with_map", lambda *a, **k: seen.append(k["num_proc"]) or real(*a, **k))
    rows = MAP_CASES["messages-sft"][0][:8]
    args = CringeConfig(
        output_dir=str(tmp_path / "out"),
        loss="sft",
        dataset_num_proc=1,
        max_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = CringeTrainer(
        model=build_tiny_model(tokenizer), args=args, train_dataset=on_disk(tmp_path, rows), processing_class=tokenizer
    )
    assert seen == [1] and trainer.train_dataset.rows == prepare(rows, tokenizer, kind="sft").rows
    trainer.train()
    assert trainer.state.global_step == 1


def test_a_tools_column_is_passed_to_the_template_or_refused(tokenizer):
    from cringe.models import build_tiny_tokenizer

    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    row = {"messages": TOOL_CHAT[:1] + [chat("assistant", "4")], "tools": json.dumps(tools)}  # TRL allows JSON text
    with pytest.raises(
        DataValidationError,
        match=r"row 0, field 'tools': the tokenizer's chat template does not "
        "render tool definitions",
    ):
        prepare([row], tokenizer, kind="sft")
    aware = build_tiny_tokenizer()
    aware.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}" + aware.chat_template
    )
    prompt = aware.decode(prepare([row, dict(row, tools=None)], aware, kind="sft")[0]["prompt_ids"])
    assert prompt.startswith('<|im_start|>system\nTools: [{"type": "function"')


def test_reward_sources_see_a_conversations_system_turn(tokenizer):
    # Prompt.text kept only the user turns: a reward source never saw the system message it was judging against.
    from cringe.loop.stages import score_samples
    from cringe.rewards import CallableReward

    rows = [
        {"prompt": [chat("system", "Answer in French."), chat("user", "Say hello.")]},
        {"prompt": [chat("user", "Say goodbye.")]},
    ]
    prompts = load_prompts(rows, tokenizer)
    assert "Answer in French." in prompts[0].text and "Say hello." in prompts[0].text
    assert prompts[1].text == "Say goodbye."  # a lone user turn reads as it always did
    seen = []
    reward = CallableReward(lambda ps, cs: seen.extend(ps) or [0.0] * len(cs))

    class Drawn:  # the two fields score_samples reads
        def __init__(self, prompt_id):
            self.prompt_id, self.completion, self.prompt = prompt_id, "Bonjour", None

    score_samples(reward, [Drawn(0), Drawn(1)], prompts)
    assert "Answer in French." in seen[0]
