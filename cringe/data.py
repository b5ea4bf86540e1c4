"""Datasets in the formats TRL users already have: validation, tokenisation and collation.

Accepted row formats, detected from the columns in this order (values are strings, or lists of chat messages for
conversational data; columns a format does not name are ignored):

    alpacafarm         instruction, input, output_1, output_2, preference   (preference 1 or 2)
    pairwise           prompt, chosen, rejected
    binary             prompt, completion, label     (label: bool, True = good)
    implicit pairwise  chosen, rejected              (the prompt is the shared prefix, as TRL extracts it)
    prompt-completion  prompt, completion            (SFT only)
    messages           messages                      (SFT only; a conversation)
    text               text                          (SFT only; plain language modelling)
    prompt-only        prompt                        (for generation in the iterative loop)

What each loss takes: the pairwise losses (Pairwise Cringe, the DPO family) need pairs (pairwise, implicit,
alpacafarm); binary Cringe takes binary rows, or pairs as chosen = good and rejected = bad; SFT takes every format
but prompt-only (pairs: the chosen side; binary: the good completions).

TRL's conventions, followed exactly where they exist:
  * A `prompt` column next to `chosen`/`rejected` is used only when it is conversational exactly when `chosen` is
    (trl.data_utils.maybe_extract_prompt). Otherwise, as in HuggingFaceH4/ultrafeedback_binarized (a string
    `prompt`, message lists `chosen`/`rejected` that repeat the user turn, and `prompt_id`, `messages`,
    `score_*` columns), the prompt is the shared prefix of chosen and rejected (trl.data_utils.extract_prompt) and
    the `prompt` column is not read. One difference: where one side is a prefix of the other, TRL's extraction
    returns an arbitrary split; here the row is invalid ("nothing left to compare").
  * SFT, prompt-completion: the loss is on the completion only (TRL's `completion_only_loss`, its default for this
    format). `messages`: the last message must be the assistant's; it is the completion, and everything before it
    (earlier assistant turns included) is the prompt. That is prompt-completion applied to a conversation, and a
    deliberate difference from TRL, whose default trains on every token of the conversation (user turns too) and
    whose `assistant_only_loss=True` trains on every assistant turn but needs `{% generation %}` markers in the
    template: here the loss is on the answer the model is asked to produce, with any chat template. `text`: every
    token is trained (TRL's language modelling); the prompt is the tokenizer's own start tokens, or its BOS (else
    EOS) when it adds none, so that the first token has a position to be predicted from.

Chat messages need `role` and `content` (`content` may be None on an assistant message that has `tool_calls`).
Every other field (`tool_calls`, `name`, `tool_call_id`, ...) is passed to the chat template as it is; a field the
template does not render is an error naming the row, column and message, never a silent drop. A field whose value
is None is absent: Arrow gives every message each key that any message in the column has. A `tools` column is
passed to the chat template as `tools=`, under the same rule.

Every row is validated before any tokenisation or training: a bad row stops everything with an error naming
its index and field, or, with `on_invalid="skip"`, is dropped and counted.

Tokenisation policy (the same for every format):
  * prompt and completion are tokenised separately, so the boundary between them is exact by construction
    and matches generation, where completion tokens follow the prompt's;
  * conversational rows are rendered with the tokenizer's chat template; the completion is what the full
    conversation adds after the prompt rendered with `add_generation_prompt=True`;
  * EOS ends every completion exactly once (appended unless the rendered completion already ends with it);
  * a prompt longer than `max_prompt_length` is an error (or skipped): cutting it would silently change the task;
  * a completion longer than `max_completion_length` is cut at the end, and a cut completion has no EOS,
    so the model is never taught to stop where the text did not stop.

Large datasets: a `datasets.Dataset` of `MAP_MIN_ROWS` rows or more (Parquet, CSV, a hub dataset, a JSON file of
`ARROW_JSON_MIN_BYTES` or more), or any Dataset when `num_proc` is given, is validated and then tokenised with
`Dataset.map(batched=True, num_proc=...)`: the same rows, token ids and errors as the per-row path, in parallel,
and cached next to the dataset's own cache files under a fingerprint of the dataset, the tokenizer, the settings
and this file's source, so a second run with the same inputs reads the result back instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import datasets
import torch
from datasets import Features, Value
from datasets.fingerprint import Hasher
from jinja2.exceptions import TemplateError

from cringe.durable.files import read_json, read_jsonl
from cringe.errors import UserError
from cringe.losses import IGNORE_INDEX
from cringe.sources import prompt_rows, split_source

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


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Validation: every check here is cheap and runs before any tokenisation
# ---------------------------------------------------------------------------------------------------------------


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
        raise DataValidationError(row, fld, "a list of token ids in a text field; token-id rows use the columns "
                                            "prompt_ids and completion_ids")
    if conversational:
        if isinstance(value, str):
            raise DataValidationError(row, fld, "a plain string in a dataset whose first row is conversational (mixed formats)")
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
        raise DataValidationError(row_id, "tools", "tool definitions need conversational rows "
                                                   "(only a chat template renders them)")
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise DataValidationError(row_id, "tools", "expected a list of tool definitions (JSON schema objects)")
    return tools or None


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


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
    return Example(row_id, prompt, (chosen, rejected), conversational=conversational, prompt_field="chosen",
                   completion_offset=len(prompt) if conversational else 0,
                   tools=_check_tools(row, row_id, conversational))


def _pairwise(row_id: int, row: Mapping, conversational: bool) -> Example:
    prompt_shape, chosen_shape = _shape(row.get("prompt")), _shape(row.get("chosen"))
    if prompt_shape and chosen_shape and prompt_shape != chosen_shape:
        # TRL's maybe_extract_prompt: a prompt column that is text where chosen is a conversation (or the
        # reverse) is not the prompt the completions follow; the shared prefix is.
        return _implicit_pairwise(row_id, row, conversational)
    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    chosen, rejected = _check_pair(row, row_id, conversational)
    return Example(row_id, prompt, (chosen, rejected), conversational=conversational,
                   tools=_check_tools(row, row_id, conversational))


def _binary(row_id: int, row: Mapping, conversational: bool) -> Example:
    ex = _prompt_completion(row_id, row, conversational)
    label = row.get("label")
    if not isinstance(label, bool):
        raise DataValidationError(row_id, "label", f"expected a boolean, got {label!r}")
    return replace(ex, label=label)


def _prompt_completion(row_id: int, row: Mapping, conversational: bool) -> Example:
    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    completion = _check_text(row.get("completion"), row_id, "completion", conversational)
    return Example(row_id, prompt, (completion,), conversational=conversational,
                   tools=_check_tools(row, row_id, conversational))


def _messages(row_id: int, row: Mapping, conversational: bool) -> Example:
    value = row.get("messages")
    if isinstance(value, str):
        raise DataValidationError(row_id, "messages", "expected a list of chat messages, got a string "
                                                      "(plain text goes in a 'text' column)")
    messages = _check_text(value, row_id, "messages", True)
    if messages[-1]["role"] != "assistant":
        raise DataValidationError(row_id, "messages", f"the last message is from {messages[-1]['role']!r}, not the "
                                                      "assistant: there is no answer to train on")
    return Example(row_id, messages[:-1], ([messages[-1]],), conversational=True, fields=("messages",),
                   prompt_field="messages", completion_offset=len(messages) - 1,
                   tools=_check_tools(row, row_id, True))


def _text(row_id: int, row: Mapping, conversational: bool) -> Example:
    value = row.get("text")
    if isinstance(value, list):
        raise DataValidationError(row_id, "text", "expected a string, got a list "
                                                  "(conversations go in a 'messages' column)")
    return Example(row_id, "", (_check_text(value, row_id, "text", False),), fields=("text",), prompt_field="text")


def _prompt_only(row_id: int, row: Mapping, conversational: bool) -> Example:
    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    return Example(row_id, prompt, (), conversational=conversational, tools=_check_tools(row, row_id, conversational))


_VALIDATORS = {"alpacafarm": _alpacafarm, "pairwise": _pairwise, "binary": _binary,
               "implicit_pairwise": _implicit_pairwise, "prompt_completion": _prompt_completion,
               "messages": _messages, "text": _text, "prompt_only": _prompt_only}


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
        logger.info("the 'prompt' column is %s but 'chosen' is %s: as TRL does, the prompt is the shared start of "
                    "chosen and rejected and the 'prompt' column is not used", prompt_shape, chosen_shape)
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
        raise UserError("this loss needs pairs (prompt/chosen/rejected); "
                        "the dataset is binary (prompt/completion/label)")
    if kind == "pairwise" and fmt in SFT_FORMATS:
        raise UserError(f"this loss needs pairs (prompt/chosen/rejected); the dataset is SFT data "
                        f"({', '.join(FORMATS[fmt])})")
    if kind == "binary" and fmt in SFT_FORMATS:
        raise UserError(f"binary Cringe needs labelled completions (prompt/completion/label) or pairs "
                        f"(prompt/chosen/rejected); the dataset is SFT data ({', '.join(FORMATS[fmt])}) with no labels")


def _for_kind(ex: Example, kind: str) -> list[Example]:
    """The training examples one validated row gives a loss of this kind (zero, one or two)."""
    fields = ex.completion_fields()
    if kind == "pairwise" or (kind == "binary" and ex.label is not None):
        return [ex]
    if kind == "binary":  # a pair: chosen is good, rejected is bad
        return [replace(ex, completions=(c,), label=good, fields=(f,))
                for c, good, f in zip(ex.completions, (True, False), fields)]
    if ex.label is False:  # SFT learns only from good completions
        return []
    return [replace(ex, completions=ex.completions[:1], fields=fields[:1], label=True)]


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------------------


def _apply_chat_template(tokenizer, messages: list, add_generation_prompt: bool, tools, row: int, fld: str) -> str:

    kwargs = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **kwargs)
    except TemplateError as err:  # e.g. a template's raise_exception("roles must alternate")
        raise DataValidationError(row, fld, f"the chat template cannot render it: {err}") from None


def _render_chat(tokenizer, messages: list, ex: Example, fld: str, *, add_generation_prompt: bool, check_from: int,
                 index_offset: int) -> str:
    """Render `messages`; refuse any field of messages[check_from:] (or `tools`, with check_from 0) that the
    template leaves out, since it would be silently dropped. A field's index in its column is i + index_offset."""
    text = _apply_chat_template(tokenizer, messages, add_generation_prompt, ex.tools, ex.row, fld)

    def renders_differently(alternative, tools) -> bool:
        try:
            return _apply_chat_template(tokenizer, alternative, add_generation_prompt, tools, ex.row, fld) != text
        except DataValidationError:  # the template cannot do without it: it is used
            return True

    if ex.tools and check_from == 0 and not renders_differently(messages, None):
        raise DataValidationError(ex.row, "tools", "the tokenizer's chat template does not render tool definitions: "
                                                   "they would be silently dropped")
    for i in range(check_from, len(messages)):
        for key in [k for k, v in messages[i].items() if k not in ("role", "content") and not _is_empty(v)]:
            without = dict(messages[i])
            del without[key]
            if not renders_differently(messages[:i] + [without] + messages[i + 1:], ex.tools):
                raise DataValidationError(
                    ex.row, fld, f"message {i + index_offset} has a '{key}' field that the tokenizer's chat template "
                                 "does not render: it would be silently dropped (use a template that renders it, or "
                                 "remove the field)")
    return text


def _render_prompt(tokenizer, ex: Example) -> str:
    if not ex.conversational:
        return ex.prompt
    return _render_chat(tokenizer, list(ex.prompt), ex, ex.prompt_field, add_generation_prompt=True, check_from=0,
                        index_offset=0)


def _render_completions(tokenizer, ex: Example, prompt_text: str) -> list[str]:
    """The text each completion adds after the prompt: exactly the strings that are tokenised."""
    if not ex.conversational:
        return list(ex.completions)
    texts = []
    for completion, fld in zip(ex.completions, ex.completion_fields()):
        full = _render_chat(tokenizer, list(ex.prompt) + list(completion), ex, fld, add_generation_prompt=False,
                            check_from=len(ex.prompt), index_offset=ex.completion_offset - len(ex.prompt))
        if not full.startswith(prompt_text):
            raise DataValidationError(ex.row, fld, "the chat template does not render the prompt as a prefix of the conversation")
        texts.append(full[len(prompt_text):])
    return texts


def render_prompt(tokenizer, prompt: Any, conversational: bool) -> str:
    return _render_prompt(tokenizer, Example(0, prompt, (), conversational=conversational))


def render_completion(tokenizer, prompt: Any, completion: Any, conversational: bool, row: int, fld: str) -> str:
    ex = Example(row, prompt, (completion,), conversational=conversational, fields=(fld,))
    return _render_completions(tokenizer, ex, _render_prompt(tokenizer, ex))[0]


def _require_eos(tokenizer) -> None:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token; set one (tokenizer.eos_token = ...)")


def _finish_prompt_ids(tokenizer, ids: list[int]) -> list[int]:
    if not ids:
        # The first completion token needs a position to be predicted from.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return ids


def _completion_text(tokenizer, text: str) -> str:
    eos_text = tokenizer.eos_token
    stripped = text.rstrip()
    if eos_text and stripped.endswith(eos_text):
        return stripped  # the template's newline after the end-of-turn token is not part of the answer
    return text


def _finish_completion_ids(tokenizer, ids: list[int], max_length: int | None) -> list[int]:
    eos = tokenizer.eos_token_id
    if not ids or ids[-1] != eos:
        ids = ids + [eos]
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
    return ids


def prompt_token_ids(tokenizer, prompt_text: str, conversational: bool) -> list[int]:
    # Chat templates write their own BOS; plain text gets the tokenizer's usual special tokens.
    return _finish_prompt_ids(tokenizer, tokenizer(prompt_text, add_special_tokens=not conversational)["input_ids"])


def completion_token_ids(tokenizer, text: str, max_length: int | None) -> list[int]:
    """Completion ids ending in exactly one EOS, cut to `max_length` (a cut completion keeps no EOS)."""
    _require_eos(tokenizer)
    ids = tokenizer(_completion_text(tokenizer, text), add_special_tokens=False)["input_ids"]
    return _finish_completion_ids(tokenizer, ids, max_length)


def _token_row(ex: Example, prompt_ids: list[int], completions: list[list[int]], max_prompt_length: int | None) -> dict:
    """The checks on token counts, then the row: {row, prompt_ids, completion_ids: [ids per completion], label}."""
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        raise DataValidationError(
            ex.row, "prompt", f"{len(prompt_ids)} tokens, longer than max_prompt_length={max_prompt_length}"
        )
    if len(completions) == 2 and completions[0] == completions[1]:
        raise DataValidationError(ex.row, "rejected", "tokenises identically to chosen after truncation")
    return {"row": ex.row, "prompt_ids": prompt_ids, "completion_ids": completions, "label": ex.label}


def _tokenize_example(tokenizer, ex: Example, max_prompt_length: int | None, max_completion_length: int | None) -> dict:
    """One example, one tokenizer call per text: the per-row path, and the reference for `_tokenize_batch`."""
    prompt_text = _render_prompt(tokenizer, ex)
    texts = _render_completions(tokenizer, ex, prompt_text)
    prompt_ids = prompt_token_ids(tokenizer, prompt_text, ex.conversational)
    return _token_row(ex, prompt_ids, [completion_token_ids(tokenizer, t, max_completion_length) for t in texts],
                      max_prompt_length)


def _tokenize_batch(tokenizer, examples: list[Example], max_prompt_length: int | None,
                    max_completion_length: int | None) -> list[dict | DataValidationError]:
    """`_tokenize_example` for many examples, with one tokenizer call for all prompts and one for all completions
    (a fast tokenizer encodes a batch as a whole): per example, its row or its error."""
    rendered: list[tuple[str, list[str]] | DataValidationError] = []
    for ex in examples:
        try:
            prompt_text = _render_prompt(tokenizer, ex)
            rendered.append((prompt_text, _render_completions(tokenizer, ex, prompt_text)))
        except DataValidationError as err:
            rendered.append(err)
    good = [r for r in rendered if not isinstance(r, DataValidationError)]
    # The dataset is conversational or not as a whole (see `_first_is_conversational`).
    conversational = bool(examples) and examples[0].conversational
    prompts = iter(_encode(tokenizer, [p for p, _ in good], add_special_tokens=not conversational))
    completions = iter(_encode(tokenizer, [_completion_text(tokenizer, t) for _, ts in good for t in ts],
                               add_special_tokens=False))
    out: list[dict | DataValidationError] = []
    for ex, r in zip(examples, rendered):
        if isinstance(r, DataValidationError):
            out.append(r)
            continue
        prompt_ids = _finish_prompt_ids(tokenizer, next(prompts))
        ids = [_finish_completion_ids(tokenizer, next(completions), max_completion_length) for _ in r[1]]
        try:
            out.append(_token_row(ex, prompt_ids, ids, max_prompt_length))
        except DataValidationError as err:
            out.append(err)
    return out


def _encode(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"] if texts else []


def tokenize_examples(
    examples: list[Example],
    tokenizer,
    *,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = 512,
    on_invalid: str = "error",
    report: ValidationReport | None = None,
) -> list[dict]:
    """Token ids per example, row by row: {row, prompt_ids, completion_ids: [ids per completion], label}."""
    _require_eos(tokenizer)
    out = []
    for ex in examples:
        try:
            out.append(_tokenize_example(tokenizer, ex, max_prompt_length, max_completion_length))
        except DataValidationError as err:
            _skip(err, on_invalid, report)
            if report is not None:
                report.kept -= 1
    if not out:
        raise UserError("no rows left after tokenisation")
    return out


@dataclass
class Prompt:
    """A prompt for generation: `text` is what reward sources see, `ids` what the policy sees."""

    prompt_id: int
    text: str
    ids: list[int]
    messages: list[dict] | None = None  # a conversational prompt's messages (system turn included)


def load_prompts(source: Any, tokenizer, *, max_prompt_length: int | None = 512, on_invalid: str = "error",
                 split: str = "train", limit: int | None = None) -> list[Prompt]:
    """Prompts from any accepted format but `text` (the prompt column; for implicit-prompt pairs, the shared
    prefix; for `messages`, the conversation before the last answer), validated and tokenised exactly as for
    training."""

    dataset = prompt_rows(load_rows(source, split=split))  # preference rows: only the prompt is needed
    if _format_of(dataset) == "text":
        raise UserError("a 'text' dataset has no prompts to generate from")
    examples, report = validate(dataset, on_invalid=on_invalid)
    prompts = []
    for ex in examples[:limit] if limit else examples:
        try:
            ids = prompt_token_ids(tokenizer, _render_prompt(tokenizer, ex), ex.conversational)
            if max_prompt_length is not None and len(ids) > max_prompt_length:
                raise DataValidationError(ex.row, "prompt", f"{len(ids)} tokens, longer than max_prompt_length={max_prompt_length}")
        except DataValidationError as err:
            _skip(err, on_invalid, report)
            continue
        text = ex.prompt if not ex.conversational else "\n".join(
            m["content"] for m in ex.prompt if m["role"] == "user" and isinstance(m.get("content"), str))
        prompts.append(Prompt(len(prompts), text, ids, [dict(m) for m in ex.prompt] if ex.conversational else None))
    if not prompts:
        raise UserError("no prompts left after validation")
    return prompts


# ---------------------------------------------------------------------------------------------------------------
# Large datasets: the same validation and tokenisation through Dataset.map (parallel, cached)
# ---------------------------------------------------------------------------------------------------------------


def _batch_rows(batch: Mapping[str, list]) -> list[dict]:
    columns = list(batch)
    return [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]


def _validate_batch(batch, indices, fmt: str, conversational: bool) -> dict[str, list]:
    """Dataset.map function: per row, the field and problem of its `DataValidationError`, or None and None."""
    fields, problems = [], []
    for i, row in zip(indices, _batch_rows(batch)):
        try:
            _validate_row(i, row, fmt, conversational)
            fields.append(None)
            problems.append(None)
        except DataValidationError as err:
            fields.append(err.field)
            problems.append(err.problem)
    return {"field": fields, "problem": problems}


TOKEN_COLUMNS = ("row", "prompt_ids", "completion_ids", "label", "field", "problem")


def _tokenize_rows(batch, indices, tokenizer, fmt: str, conversational: bool, kind: str,
                   max_prompt_length: int | None, max_completion_length: int | None) -> dict[str, list]:
    """Dataset.map function: validated rows to training rows (0, 1 or 2 per input row; see `_for_kind`), with
    the field and problem of a row that fails at tokenisation (its ids then empty)."""
    examples = []
    for i, row in zip(indices, _batch_rows(batch)):
        try:
            ex = _validate_row(i, row, fmt, conversational)
        except DataValidationError:
            continue  # counted by the validation pass, which ran first
        examples.extend(_for_kind(ex, kind))
    out: dict[str, list] = {c: [] for c in TOKEN_COLUMNS}
    for ex, result in zip(examples, _tokenize_batch(tokenizer, examples, max_prompt_length, max_completion_length)):
        failed = isinstance(result, DataValidationError)
        out["row"].append(ex.row)
        out["prompt_ids"].append([] if failed else result["prompt_ids"])
        out["completion_ids"].append([] if failed else result["completion_ids"])
        out["label"].append(ex.label)
        out["field"].append(result.field if failed else None)
        out["problem"].append(result.problem if failed else None)
    return out


_SOURCE_HASH: list[str] = []


def _source_hash() -> str:
    """This file's content: a change to the validation or tokenisation code must not reuse old cached results."""
    if not _SOURCE_HASH:
        with open(__file__, "rb") as f:
            _SOURCE_HASH.append(hashlib.sha256(f.read()).hexdigest())
    return _SOURCE_HASH[0]


def _fingerprint(dataset, step: str, settings: dict, tokenizer=None) -> str:
    """The cache key of one map step: the input dataset, the step and its settings, the tokenizer (its vocabulary,
    special tokens and chat template, hashed by datasets) and this file's source."""

    hasher = Hasher()
    for part in (dataset._fingerprint, step, sorted(settings.items()), _source_hash()):
        hasher.update(part)
    if tokenizer is not None:
        hasher.update(Hasher.hash(tokenizer))
    return hasher.hexdigest()


def auto_num_proc(n_rows: int) -> int:
    """Processes for `n_rows`: one per CPU this process may use, at most 8, with at least ROWS_PER_PROC rows each."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_AUTO_NUM_PROC, n_rows // ROWS_PER_PROC))


def _uses_map(dataset, num_proc: int | None) -> bool:

    return isinstance(dataset, datasets.Dataset) and (num_proc is not None or len(dataset) >= MAP_MIN_ROWS)


def _prepare_with_map(dataset, tokenizer, *, kind: str, max_prompt_length: int | None,
                      max_completion_length: int | None, on_invalid: str, num_proc: int | None
                      ) -> tuple[list[dict], ValidationReport]:
    """Validation, then tokenisation, each one `Dataset.map` over the whole dataset; the same rows, report and
    errors as `validate` + `tokenize_examples`."""

    try:
        from datasets import List
    except ImportError:  # datasets < 4 calls it Sequence
        from datasets import Sequence as List

    fmt, conversational = _inspect(dataset)
    # Decode only the columns the format reads (ultrafeedback's `messages` is as large as `chosen`).
    dataset = dataset.select_columns([c for c in dataset.column_names if c in (*FORMATS[fmt], "tools")])
    procs = num_proc if num_proc is not None else auto_num_proc(len(dataset))
    common = dict(batched=True, with_indices=True, remove_columns=dataset.column_names,
                  num_proc=procs if procs > 1 else None)
    settings = {"fmt": fmt, "conversational": conversational}
    checked = dataset.map(
        _validate_batch, fn_kwargs=settings, features=Features({"field": Value("string"), "problem": Value("string")}),
        new_fingerprint=_fingerprint(dataset, "validate", settings), desc="validating rows", **common,
    )
    report = ValidationReport(fmt, conversational)
    checked = checked.to_dict()
    for i, (fld, problem) in enumerate(zip(checked["field"], checked["problem"])):
        if problem is not None:
            _skip(DataValidationError(i, fld, problem), on_invalid, report)
    report.kept = len(dataset) - sum(report.skipped.values())
    _finish_validation(report)

    settings.update(kind=kind, max_prompt_length=max_prompt_length, max_completion_length=max_completion_length)
    features = Features({"row": Value("int64"), "prompt_ids": List(Value("int32")),
                         "completion_ids": List(List(Value("int32"))), "label": Value("bool"),
                         "field": Value("string"), "problem": Value("string")})
    tokens = dataset.map(
        _tokenize_rows, fn_kwargs=dict(settings, tokenizer=tokenizer), features=features,
        new_fingerprint=_fingerprint(dataset, "tokenize", settings, tokenizer), desc="tokenising rows", **common,
    )
    columns = tokens.to_dict()
    rows = []
    for row, prompt_ids, completion_ids, label, fld, problem in zip(*(columns[c] for c in TOKEN_COLUMNS)):
        if problem is not None:
            _skip(DataValidationError(row, fld, problem), on_invalid, report)
            report.kept -= 1
            continue
        rows.append({"row": row, "prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": label})
    if not rows:
        raise UserError("no rows left after tokenisation")
    return rows, report


# ---------------------------------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Tokenised training data. kind: 'pairwise' (completion_ids = [chosen, rejected]) or 'binary'."""

    kind: str
    rows: list[dict]
    report: ValidationReport

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def prepare(
    source: Any,
    tokenizer,
    *,
    kind: str,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = 512,
    on_invalid: str = "error",
    split: str = "train",
    name: str | None = None,
    num_proc: int | None = None,
) -> PreparedData:
    """Load, validate, convert and tokenise training data for a loss of the given kind.

    kind: 'pairwise' (Pairwise Cringe, DPO family), 'binary' (binary Cringe) or 'sft'. Pairwise data serves
    binary Cringe too (chosen -> good, rejected -> bad) and SFT (chosen only); binary data serves SFT (good
    completions only) but not pairwise losses; SFT data (prompt/completion, messages, text) serves SFT only.
    num_proc: processes for a `datasets.Dataset` (given: always through `Dataset.map`; None: `Dataset.map` from
    MAP_MIN_ROWS rows, with `auto_num_proc`). A list of dicts is always tokenised row by row in this process.
    """
    _check_on_invalid(on_invalid)
    dataset = load_rows(source, split=split, name=name)
    if {"prompt_ids", "completion_ids"} <= set(column_names(dataset)):
        return _pretokenized(dataset, kind)
    _check_kind(kind, _format_of(dataset))
    _require_eos(tokenizer)
    prep = dict(max_prompt_length=max_prompt_length, max_completion_length=max_completion_length, on_invalid=on_invalid)
    if _uses_map(dataset, num_proc):
        rows, report = _prepare_with_map(dataset, tokenizer, kind=kind, num_proc=num_proc, **prep)
    else:
        examples, report = validate(dataset, on_invalid=on_invalid)
        examples = [converted for ex in examples for converted in _for_kind(ex, kind)]
        rows = tokenize_examples(examples, tokenizer, report=report, **prep)
    return PreparedData("pairwise" if kind == "pairwise" else "binary", rows, report)


def _pretokenized(rows, kind: str) -> PreparedData:
    """Rows that are already token ids ({prompt_ids, completion_ids: [chosen, rejected] or [completion], label}),
    as `cringe iterate` writes them to pairs.jsonl: checked, not tokenised again, so a round trained in another
    process (`accelerate launch ... cringe train`) sees exactly the ids that were sampled."""
    out = []
    for i, row in enumerate(rows):
        completions = row.get("completion_ids")
        if not isinstance(row.get("prompt_ids"), list) or not row["prompt_ids"]:
            raise DataValidationError(i, "prompt_ids", "expected a non-empty list of token ids")
        if not isinstance(completions, list) or len(completions) not in (1, 2) or not all(
                isinstance(c, list) and c for c in completions):
            raise DataValidationError(i, "completion_ids", "expected one or two non-empty lists of token ids")
        out.append({"row": row.get("row", i), "prompt_ids": row["prompt_ids"], "completion_ids": completions,
                    "label": row.get("label")})
    pairs = len(out[0]["completion_ids"]) == 2
    if any((len(r["completion_ids"]) == 2) != pairs for r in out):
        raise UserError("token-id rows mix pairs and single completions")
    if kind == "pairwise" and not pairs:
        raise UserError("this loss needs pairs; the token-id rows hold single completions")
    if kind == "binary" and pairs:
        out = [{**r, "completion_ids": [c], "label": good}
               for r in out for c, good in zip(r["completion_ids"], (True, False))]
    elif kind == "sft":
        out = [{**r, "completion_ids": r["completion_ids"][:1], "label": True}
               for r in out if pairs or r["label"]]
    if not pairs and kind == "binary" and not all(isinstance(r["label"], bool) for r in out):
        raise UserError("binary token-id rows need a boolean 'label'")
    report = ValidationReport("token_ids", False, kept=len(out))
    return PreparedData("pairwise" if kind == "pairwise" else "binary", out, report)


# ---------------------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------------------


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


@dataclass
class Collator:
    """Batches for a causal LM.

    Pairwise rows become 2B sequences: the B chosen first, then the B rejected (one forward pass for both).
    Padded (default): input_ids [S, T], attention_mask [S, T], labels [S, T], right-padded; labels carry
    IGNORE_INDEX on prompt and padding and are aligned with input_ids (the loss shifts them).
    Padding-free (`padding_free=True`): the S sequences are concatenated into one row: input_ids, labels,
    position_ids (restarting at 0 for each sequence, which is how transformers recognises packed sequences and
    keeps attention within each) and seq_id (the sequence of each position), all [1, total]; no attention_mask.
    A prompt always has at least one token, so no counted label is ever predicted across a boundary.
    Both: num_sequences [] (S), is_positive [S] for binary data, ref_logps [S] when precomputed on the rows.
    """

    pad_token_id: int
    padding_free: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n_completions = len(rows[0]["completion_ids"])
        sequences, label_rows = [], []
        for j in range(n_completions):
            for r in rows:
                prompt, completion = r["prompt_ids"], r["completion_ids"][j]
                sequences.append(prompt + completion)
                label_rows.append([IGNORE_INDEX] * len(prompt) + completion)
        if self.padding_free:
            batch = {
                "input_ids": torch.tensor([[t for s in sequences for t in s]], dtype=torch.long),
                "labels": torch.tensor([[t for s in label_rows for t in s]], dtype=torch.long),
                "position_ids": torch.tensor([[i for s in sequences for i in range(len(s))]], dtype=torch.long),
                "seq_id": torch.tensor([[k for k, s in enumerate(sequences) for _ in s]], dtype=torch.long),
            }
        else:
            batch = {
                "input_ids": _pad(sequences, self.pad_token_id),
                "attention_mask": _pad([[1] * len(s) for s in sequences], 0),
                "labels": _pad(label_rows, IGNORE_INDEX),
            }
        batch["num_sequences"] = torch.tensor(len(sequences))
        if rows[0].get("label") is not None and n_completions == 1:
            batch["is_positive"] = torch.tensor([bool(r["label"]) for r in rows])
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref_logps"][j] for j in range(n_completions) for r in rows])
        return batch
