"""Loading and validating rows in TRL's formats (the format table and the rules: cringe.data's docstring), and
where prompts come from at scale.

Where prompts come from at scale: a Hub dataset's named split, and preference rows read for their prompts.

* `NAME:SPLIT` names one split of a `datasets` dataset anywhere a data source is taken, e.g.
  `HuggingFaceH4/ultrafeedback_binarized:train_gen` or `...:test_gen[:500]` (the `datasets` slice syntax). Hub ids
  cannot contain a colon, so the suffix is never part of a name.
* `prompt_rows`: loading *prompts* from preference rows needs neither side's answer. UltraFeedback's rows (a text
  `prompt`, conversational `chosen`/`rejected` that repeat the user turn) put the prompt in the shared prefix of
  chosen and rejected, and a pair whose two sides are equal has no shared-prefix prompt at all (cringe.data refuses
  it as a pair); as a prompt source its prompt is `chosen` before the final assistant turn, as a conversation, so
  the policy's chat template renders it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import datasets

from cringe.durable.files import read_json, read_jsonl
from cringe.errors import UserError

logger = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool", "developer"}

FORMATS = {
    "alpacafarm": ("instruction", "input", "output_1", "output_2", "preference"),
    "pairwise": ("prompt", "chosen", "rejected"),
    "binary": ("prompt", "completion", "label"),
    "implicit_pairwise": ("chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
    "prompt_only": ("prompt",),
}  # in detection order: the first whose columns are all present wins
PAIRWISE_FORMATS = ("alpacafarm", "pairwise", "implicit_pairwise")
SFT_FORMATS = ("prompt_completion", "messages", "text")
KINDS = ("pairwise", "binary", "sft")

# At or above these sizes, data goes through Arrow and `Dataset.map` (parallel, cached); below, the per-row path
# is faster than the fixed cost of the datasets machinery.
MAP_MIN_ROWS = 2_000
ARROW_JSON_MIN_BYTES = 4 << 20
MAX_AUTO_NUM_PROC = 8
ROWS_PER_PROC = 1_000  # fewer rows per process than this costs more in start-up than it saves


class DataValidationError(UserError):
    """A row that cannot be trained on. `row` is its 0-based index in the input, `field` the column."""

    def __init__(self, row: int, field: str, problem: str):
        self.row, self.field, self.problem = row, field, problem
        super().__init__(f"row {row}, field '{field}': {problem}")

    def __reduce__(self):  # picklable across processes, whose default rebuilds from the message alone
        return type(self), (self.row, self.field, self.problem)


# ----- loading ----------------------------------------------------------------------------------------------------

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def _read_json_rows(path: str) -> list[dict]:
    # Read small JSON files ourselves: it is faster than the datasets builder, and a broken line is named.

    rows = read_jsonl(path) if path.lower().endswith(".jsonl") else read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise UserError(f"{path}: expected a list of JSON objects (one per row)")
    return rows


def _load_json(path: str):
    """A large JSON/JSONL file as a cached `datasets.Dataset`; a small one (or one Arrow cannot read) as a list."""
    if os.path.getsize(path) >= ARROW_JSON_MIN_BYTES:
        try:
            return datasets.load_dataset("json", data_files=path, split="train")
        except Exception as err:  # noqa: BLE001 - our reader either reads it or says which line is broken
            logger.info("%s: the datasets JSON reader failed (%s); reading it row by row", path, err)
    return _read_json_rows(path)


def load_rows(source: Any, split: str = "train", name: str | None = None):
    """Rows from a local JSON/JSONL/Parquet/CSV file, a `datasets` name, a Dataset, or a list of dicts.

    Returns a `datasets.Dataset` or a list of dicts; both are sequences of mappings.
    """

    if isinstance(source, (datasets.Dataset, list)):
        return source
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise UserError(f"the dataset has no split {split!r}; it has {', '.join(source)}")
        return source[split]
    source = os.fspath(source)
    suffix = os.path.splitext(source)[1].lower()
    if not os.path.exists(source):
        source, named_split = split_source(source)  # NAME:SPLIT
        split = named_split or split
    if os.path.isfile(source):
        if suffix in (".json", ".jsonl"):
            return _load_json(source)
        if suffix in (".parquet", ".csv"):
            return datasets.load_dataset(suffix[1:], data_files=source, split="train")
        raise UserError(f"{source}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv")
    if suffix in LOCAL_SUFFIXES:
        # It names a file: asking the Hub for it would only hide the typo behind a network error.
        raise UserError(f"{source}: no such file")
    try:
        return datasets.load_dataset(source, name, split=split)
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as err:
        raise UserError(f"{source}: not a local file, and datasets cannot load it: {err}") from None


def column_names(rows) -> list[str]:
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def detect_format(columns: Sequence[str]) -> str:
    """The row format implied by a dataset's columns (see module docstring)."""
    cols = set(columns)
    for fmt, needed in FORMATS.items():
        if set(needed) <= cols:
            return fmt
    raise UserError(
        f"cannot tell the dataset format from its columns {sorted(cols)}; expected one of: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in FORMATS.items())
    )


# ----- validation: cheap checks, before any tokenisation ----------------------------------------


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


def _check_messages(value: Any, row: int, fld: str) -> list[dict]:
    """The messages as plain dicts with every field kept, less the None-valued ones (see module docstring)."""
    if not isinstance(value, list) or not value:
        raise DataValidationError(row, fld, "expected a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        calls = isinstance(message, Mapping) and not _is_empty(message.get("tool_calls"))
        if not isinstance(message, Mapping) or "role" not in message or ("content" not in message and not calls):
            raise DataValidationError(row, fld, f"message {i} is not a {{'role', 'content'}} mapping: {message!r:.80}")
        if message["role"] not in ROLES:
            raise DataValidationError(row, fld, f"message {i} has unknown role {message['role']!r}")
        content = message.get("content")
        if not isinstance(content, str) and not (content is None and calls):
            raise DataValidationError(row, fld, f"message {i} content is not a string")
        messages.append({k: v for k, v in message.items() if v is not None or k == "content"})
    return messages


def _check_text(value: Any, row: int, fld: str, conversational: bool, allow_empty: bool = False):
    if value is None:
        raise DataValidationError(row, fld, "missing")
    if _is_token_ids(value):
        # Token ids belong in their own columns (prompt_ids, completion_ids), never in a text field: read as text,
        # a list of ids would be silently dropped or misread.
        raise DataValidationError(
            row, fld, "a list of token ids in a text field; token-id rows use the columns prompt_ids and completion_ids"
        )
    if conversational:
        if isinstance(value, str):
            raise DataValidationError(
                row, fld, "a plain string in a dataset whose first row is conversational (mixed formats)"
            )
        return _check_messages(value, row, fld)
    if isinstance(value, list):
        raise DataValidationError(row, fld, "a message list in a dataset whose first row is plain text (mixed formats)")
    if not isinstance(value, str):
        raise DataValidationError(row, fld, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataValidationError(row, fld, "empty")
    return value


def _check_tools(row: Mapping, row_id: int, conversational: bool) -> list | None:
    """The row's `tools` column (TRL's name; a list of JSON-schema function definitions, or that list as JSON)."""
    tools = row.get("tools")
    if _is_empty(tools):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise DataValidationError(row_id, "tools", f"not valid JSON: {err}") from None
    if not conversational:
        raise DataValidationError(
            row_id, "tools", "tool definitions need conversational rows (only a chat template renders them)"
        )
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise DataValidationError(row_id, "tools", "expected a list of tool definitions (JSON schema objects)")
    return tools or None


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping)


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _shape(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "messages" if _is_conversational(value) else None


def _common_prefix(a, b):
    """TRL's implicit-prompt rule: the longest shared prefix, in whole messages or in characters (a space
    just before the first difference goes with the completions)."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if isinstance(a, str) and i > 0 and a[i - 1] == " ":
        i -= 1
    return a[:i], a[i:], b[i:]


@dataclass
class Example:
    """One validated row. `completions` holds (chosen, rejected) for pairs or (completion,) for binary/SFT/prompt-only.

    For error messages: `fields` names the column of each completion (default: chosen/rejected or completion),
    `prompt_field` the prompt's, and `completion_offset` is the index, in its column, of a conversational
    completion's first message (non-zero where the prompt is the start of the same list).
    """

    row: int
    prompt: Any
    completions: tuple
    label: bool | None = None
    conversational: bool = False
    fields: tuple[str, ...] = ()
    prompt_field: str = "prompt"
    completion_offset: int = 0
    tools: list | None = None

    def completion_fields(self) -> tuple[str, ...]:
        return self.fields or (("chosen", "rejected") if len(self.completions) == 2 else ("completion",))


@dataclass
class ValidationReport:
    format: str
    conversational: bool
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, err: DataValidationError):
        key = f"{err.field}: {err.problem.split(':')[0]}"
        self.skipped[key] = self.skipped.get(key, 0) + 1


def _check_pair(row: Mapping, row_id: int, conversational: bool):
    chosen = _check_text(row.get("chosen"), row_id, "chosen", conversational)
    rejected = _check_text(row.get("rejected"), row_id, "rejected", conversational)
    if chosen == rejected:
        raise DataValidationError(row_id, "rejected", "identical to chosen")
    return chosen, rejected


def _alpacafarm(row_id: int, row: Mapping, conversational: bool) -> Example:
    for fld in ("instruction", "output_1", "output_2"):
        _check_text(row.get(fld), row_id, fld, False)
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataValidationError(row_id, "input", f"expected a string, got {type(extra).__name__}")
    pref = row.get("preference")
    if pref not in (1, 2) or isinstance(pref, bool):
        raise DataValidationError(row_id, "preference", f"expected 1 or 2, got {pref!r}")
    prompt = row["instruction"] + (f"\n\n{extra}" if extra and extra.strip() else "")
    chosen, rejected = (row["output_1"], row["output_2"]) if pref == 1 else (row["output_2"], row["output_1"])
    if chosen == rejected:
        raise DataValidationError(row_id, "output_2", "identical to output_1")
    return Example(row_id, prompt, (chosen, rejected))


def _implicit_pairwise(row_id: int, row: Mapping, conversational: bool) -> Example:
    chosen, rejected = _check_pair(row, row_id, conversational)
    prompt, chosen, rejected = _common_prefix(chosen, rejected)
    if not chosen or not rejected:
        raise DataValidationError(row_id, "chosen", "one side is a prefix of the other: nothing left to compare")
    return Example(
        row_id,
        prompt,
        (chosen, rejected),
        conversational=conversational,
        prompt_field="chosen",
        completion_offset=len(prompt) if conversational else 0,
        tools=_check_tools(row, row_id, conversational),
    )


def _pairwise(row_id: int, row: Mapping, conversational: bool) -> Example:
    prompt_shape, chosen_shape = _shape(row.get("prompt")), _shape(row.get("chosen"))
    if prompt_shape and chosen_shape and prompt_shape != chosen_shape:
        # TRL's maybe_extract_prompt: a prompt column that is text where chosen is a conversation (or the
        # reverse) is not the prompt the completions follow; the shared prefix is.
        return _implicit_pairwise(row_id, row, conversational)
    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    chosen, rejected = _check_pair(row, row_id, conversational)
    return Example(
        row_id,
        prompt,
        (chosen, rejected),
        conversational=conversational,
        tools=_check_tools(row, row_id, conversational),
    )


def _binary(row_id: int, row: Mapping, conversational: bool) -> Example:
    ex = _prompt_completion(row_id, row, conversational)
    label = row.get("label")
    if not isinstance(label, bool):
        raise DataValidationError(row_id, "label", f"expected a boolean, got {label!r}")
    return replace(ex, label=label)


def _prompt_completion(row_id: int, row: Mapping, conversational: bool) -> Example:
    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    completion = _check_text(row.get("completion"), row_id, "completion", conversational)
    return Example(
        row_id, prompt, (completion,), conversational=conversational, tools=_check_tools(row, row_id, conversational)
    )


def _messages(row_id: int, row: Mapping, conversational: bool) -> Example:
    value = row.get("messages")
    if isinstance(value, str):
        raise DataValidationError(
            row_id, "messages", "expected a list of chat messages, got a string (plain text goes in a 'text' column)"
        )
    messages = _check_text(value, row_id, "messages", True)
    if messages[-1]["role"] != "assistant":
        raise DataValidationError(
            row_id,
            "messages",
            f"the last message is from {messages[-1]['role']!r}, not the assistant: there is no answer to train on",
        )
    return Example(
        row_id,
        messages[:-1],
        ([messages[-1]],),
        conversational=True,
        fields=("messages",),
        prompt_field="messages",
        completion_offset=len(messages) - 1,
        tools=_check_tools(row, row_id, True),
    )


def _text(row_id: int, row: Mapping, conversational: bool) -> Example:
    value = row.get("text")
    if isinstance(value, list):
        raise DataValidationError(
            row_id, "text", "expected a string, got a list (conversations go in a 'messages' column)"
        )
    return Example(row_id, "", (_check_text(value, row_id, "text", False),), fields=("text",), prompt_field="text")


def _prompt_only(row_id: int, row: Mapping, conversational: bool) -> Example:
    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    return Example(row_id, prompt, (), conversational=conversational, tools=_check_tools(row, row_id, conversational))


_VALIDATORS = {
    "alpacafarm": _alpacafarm,
    "pairwise": _pairwise,
    "binary": _binary,
    "implicit_pairwise": _implicit_pairwise,
    "prompt_completion": _prompt_completion,
    "messages": _messages,
    "text": _text,
    "prompt_only": _prompt_only,
}


def _validate_row(row_id: int, row: Mapping, fmt: str, conversational: bool) -> Example:
    return _VALIDATORS[fmt](row_id, row, conversational)


def _first_is_conversational(first: Mapping, fmt: str) -> bool:
    """The first row decides whether the dataset is conversational; any row that disagrees is a mixed-format error.
    Pairs go by `chosen`, as TRL does: a prompt column of the other shape is not used (see `_pairwise`)."""
    if fmt in ("alpacafarm", "text"):
        return False
    if fmt == "messages":
        return True
    return _is_conversational(first.get("chosen" if fmt in ("pairwise", "implicit_pairwise") else "prompt"))


def _format_of(dataset) -> str:
    """The dataset's format; raises UserError when it has no rows or no known columns."""
    if len(dataset) == 0:
        raise UserError("the dataset has no rows")
    return detect_format(column_names(dataset))


def _inspect(dataset) -> tuple[str, bool]:
    """(format, conversational) of a dataset; raises UserError when it has no rows or no known columns."""
    fmt = _format_of(dataset)
    first = dataset[0]
    conversational = _first_is_conversational(first, fmt)
    prompt_shape, chosen_shape = _shape(first.get("prompt")), _shape(first.get("chosen"))
    if fmt == "pairwise" and prompt_shape and chosen_shape and prompt_shape != chosen_shape:
        logger.info(
            "the 'prompt' column is %s but 'chosen' is %s: as TRL does, the prompt is the shared start of "
            "chosen and rejected and the 'prompt' column is not used",
            prompt_shape,
            chosen_shape,
        )
    return fmt, conversational


def _check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ("error", "skip"):
        raise UserError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")


def _skip(err: DataValidationError, on_invalid: str, report: ValidationReport | None) -> None:
    """Raise a bad row's error, or count it (skip mode)."""
    if on_invalid == "error":
        raise err
    if report is not None:
        report.skip(err)


def _finish_validation(report: ValidationReport) -> None:
    if report.skipped:
        logger.warning("skipped %d invalid rows: %s", sum(report.skipped.values()), report.skipped)
    if not report.kept:
        raise UserError(f"no valid rows left after validation: {report.skipped}")


def validate(dataset, on_invalid: str = "error") -> tuple[list[Example], ValidationReport]:
    """Check every row and normalise it to an `Example`. Raises `DataValidationError` on the first bad row
    (`on_invalid="error"`) or drops bad rows and counts them with a warning (`on_invalid="skip"`)."""
    _check_on_invalid(on_invalid)
    fmt, conversational = _inspect(dataset)
    report = ValidationReport(fmt, conversational)
    examples = []
    for i, row in enumerate(dataset):
        try:
            examples.append(_validate_row(i, row, fmt, conversational))
        except DataValidationError as err:
            _skip(err, on_invalid, report)
    report.kept = len(examples)
    _finish_validation(report)
    return examples, report


def _check_kind(kind: str, fmt: str) -> None:
    """Refuse, before any work, data that cannot serve the loss (see module docstring)."""
    if kind not in KINDS:
        raise UserError(f"kind must be 'pairwise', 'binary' or 'sft', got {kind!r}")
    if fmt == "prompt_only":
        raise UserError("a prompt-only dataset has nothing to train on; use it with `cringe iterate`")
    if kind == "pairwise" and fmt == "binary":
        raise UserError(
            "this loss needs pairs (prompt/chosen/rejected); the dataset is binary (prompt/completion/label)"
        )
    if kind == "pairwise" and fmt in SFT_FORMATS:
        raise UserError(
            f"this loss needs pairs (prompt/chosen/rejected); the dataset is SFT data ({', '.join(FORMATS[fmt])})"
        )
    if kind == "binary" and fmt in SFT_FORMATS:
        raise UserError(
            f"binary Cringe needs labelled completions (prompt/completion/label) or pairs "
            f"(prompt/chosen/rejected); the dataset is SFT data ({', '.join(FORMATS[fmt])}) with no labels"
        )


def kind_selections(n_completions: int, label: bool | None, kind: str) -> list[tuple[tuple[int, ...], bool | None]]:
    """What a loss of this kind trains on from one row of `n_completions` completions (2: chosen, rejected) and a
    label: (positions of the completions kept, their label), zero, one or two of them. The one conversion from a
    row to a loss's kind, for text rows (`_for_kind`) and token-id rows alike (cringe.data.tokenize)."""
    if kind == "pairwise" or (kind == "binary" and label is not None):
        return [(tuple(range(n_completions)), label)]
    if kind == "binary":  # a pair: chosen is good, rejected is bad
        return [((0,), True), ((1,), False)]
    if label is False:  # SFT learns only from good completions
        return []
    return [((0,), True)]


def _for_kind(ex: Example, kind: str) -> list[Example]:
    """The training examples one validated row gives a loss of this kind (kind_selections)."""
    fields = ex.completion_fields()
    return [
        replace(
            ex, completions=tuple(ex.completions[i] for i in keep), fields=tuple(fields[i] for i in keep), label=label
        )
        for keep, label in kind_selections(len(ex.completions), ex.label, kind)
    ]


def check_prompt_length(ids: list[int], max_prompt_length: int | None, row: int) -> None:
    """A prompt longer than max_prompt_length is an error (or skipped): cutting it would silently change the task."""
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        raise DataValidationError(
            row, "prompt", f"{len(ids)} tokens, longer than max_prompt_length={max_prompt_length}"
        )


# ----- prompt sources --------------------------------------------------------------------------------


def split_source(source: str) -> tuple[str, str | None]:
    """('NAME', 'SPLIT') from 'NAME:SPLIT'; (source, None) when it names no split (a local path, a plain name)."""
    name, sep, split = source.partition(":")
    if not sep or not name or not split or "/" in split or "\\" in split:
        return source, None
    return name, split


def instruction_text(row: dict) -> str:
    """An AlpacaEval/AlpacaFarm row's prompt: the instruction, and its `input` after a blank line when not empty
    (AlpacaFarm's formatting)."""
    extra = row.get("input")
    return row["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")


def _columns(rows) -> set[str]:
    if hasattr(rows, "column_names"):
        return set(rows.column_names)
    return {key for row in rows for key in row}


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def prompt_rows(rows):
    """Rows as prompt sources: conversational pairs without a conversational `prompt` column become
    {prompt: chosen before its last assistant turn} (tools kept); AlpacaEval/AlpacaFarm rows (instruction, output)
    become a user turn; anything else is returned as it is."""
    columns = _columns(rows)
    if {"instruction", "output"} <= columns and "output_1" not in columns:
        # AlpacaEval / AlpacaFarm evaluation rows: the instruction (and its input) is the user's turn.
        return [{"prompt": [{"role": "user", "content": instruction_text(r)}]} for r in rows]
    if "chosen" not in columns or "instruction" in columns or len(rows) == 0:
        return rows
    first = rows[0]
    if not _is_chat(first.get("chosen")) or _is_chat(first.get("prompt")):
        return rows
    out = []
    for row in rows:
        chosen = row.get("chosen")
        if _is_chat(chosen) and chosen[-1].get("role") == "assistant":
            chosen = chosen[:-1]
        out.append({"prompt": chosen, **({"tools": row["tools"]} if row.get("tools") is not None else {})})
    return out
