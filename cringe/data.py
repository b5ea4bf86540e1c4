"""Datasets in the formats TRL users already have: validation, tokenisation and collation.

Accepted row formats (columns; values are strings, or lists of chat messages for conversational data):

    pairwise           prompt, chosen, rejected
    implicit pairwise  chosen, rejected              (the prompt is the shared prefix, as TRL extracts it)
    binary             prompt, completion, label     (label: bool, True = good)
    alpacafarm         instruction, input, output_1, output_2, preference   (preference 1 or 2)
    prompt-only        prompt                        (for generation in the iterative loop)

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
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .losses import IGNORE_INDEX

logger = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool", "developer"}

FORMATS = {
    "pairwise": ("prompt", "chosen", "rejected"),
    "implicit_pairwise": ("chosen", "rejected"),
    "binary": ("prompt", "completion", "label"),
    "alpacafarm": ("instruction", "input", "output_1", "output_2", "preference"),
    "prompt_only": ("prompt",),
}


class DataValidationError(ValueError):
    """A row that cannot be trained on. `row` is its 0-based index in the input, `field` the column."""

    def __init__(self, row: int, field: str, problem: str):
        self.row, self.field, self.problem = row, field, problem
        super().__init__(f"row {row}, field '{field}': {problem}")


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

def _read_json_rows(path: str) -> list[dict]:
    # Read JSON ourselves rather than through Arrow: Arrow rejects a file whose rows mix strings and message
    # lists with a type error that names no row, where our validation names the row and the field.
    with open(path, encoding="utf-8") as f:
        if path.lower().endswith(".jsonl"):
            rows = []
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}: line {line_no} is not valid JSON: {err}") from None
        else:
            rows = json.load(f)
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"{path}: expected a list of JSON objects (one per row)")
    return rows


def load_rows(source: Any, split: str = "train", name: str | None = None):
    """Rows from a local JSON/JSONL/Parquet/CSV file, a `datasets` name, a Dataset, or a list of dicts.

    Returns a `datasets.Dataset` or a list of dicts; both are sequences of mappings.
    """
    import datasets

    if isinstance(source, (datasets.Dataset, list)):
        return source
    if isinstance(source, datasets.DatasetDict):
        return source[split]
    source = os.fspath(source)
    if os.path.exists(source):
        suffix = os.path.splitext(source)[1].lower()
        if suffix in (".json", ".jsonl"):
            return _read_json_rows(source)
        if suffix in (".parquet", ".csv"):
            return datasets.load_dataset(suffix[1:], data_files=source, split="train")
        raise ValueError(f"{source}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv")
    return datasets.load_dataset(source, name, split=split)


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
    for fmt in ("alpacafarm", "pairwise", "binary", "implicit_pairwise", "prompt_only"):
        if set(FORMATS[fmt]) <= cols:
            return fmt
    raise ValueError(
        f"cannot tell the dataset format from its columns {sorted(cols)}; expected one of: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in FORMATS.items())
    )


# ---------------------------------------------------------------------------------------------------------------
# Validation: every check here is cheap and runs before any tokenisation
# ---------------------------------------------------------------------------------------------------------------


def _check_messages(value: Any, row: int, fld: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataValidationError(row, fld, "expected a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataValidationError(row, fld, f"message {i} is not a {{'role', 'content'}} mapping: {message!r:.80}")
        if message["role"] not in ROLES:
            raise DataValidationError(row, fld, f"message {i} has unknown role {message['role']!r}")
        if not isinstance(message["content"], str):
            raise DataValidationError(row, fld, f"message {i} content is not a string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _check_text(value: Any, row: int, fld: str, conversational: bool, allow_empty: bool = False):
    if value is None:
        raise DataValidationError(row, fld, "missing")
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


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping)


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
    """One validated row. `completions` holds (chosen, rejected) for pairs or (completion,) for binary/prompt-only."""

    row: int
    prompt: Any
    completions: tuple
    label: bool | None = None
    conversational: bool = False


@dataclass
class ValidationReport:
    format: str
    conversational: bool
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, err: DataValidationError):
        key = f"{err.field}: {err.problem.split(':')[0]}"
        self.skipped[key] = self.skipped.get(key, 0) + 1


def _validate_row(row_id: int, row: Mapping, fmt: str, conversational: bool) -> Example:
    if fmt == "alpacafarm":
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

    if fmt == "implicit_pairwise":
        chosen = _check_text(row.get("chosen"), row_id, "chosen", conversational)
        rejected = _check_text(row.get("rejected"), row_id, "rejected", conversational)
        if chosen == rejected:
            raise DataValidationError(row_id, "rejected", "identical to chosen")
        prompt, chosen, rejected = _common_prefix(chosen, rejected)
        if not chosen or not rejected:
            raise DataValidationError(row_id, "chosen", "one side is a prefix of the other: nothing left to compare")
        return Example(row_id, prompt, (chosen, rejected), conversational=conversational)

    prompt = _check_text(row.get("prompt"), row_id, "prompt", conversational, allow_empty=True)
    if fmt == "prompt_only":
        return Example(row_id, prompt, (), conversational=conversational)
    if fmt == "pairwise":
        chosen = _check_text(row.get("chosen"), row_id, "chosen", conversational)
        rejected = _check_text(row.get("rejected"), row_id, "rejected", conversational)
        if chosen == rejected:
            raise DataValidationError(row_id, "rejected", "identical to chosen")
        return Example(row_id, prompt, (chosen, rejected), conversational=conversational)
    completion = _check_text(row.get("completion"), row_id, "completion", conversational)
    label = row.get("label")
    if not isinstance(label, bool):
        raise DataValidationError(row_id, "label", f"expected a boolean, got {label!r}")
    return Example(row_id, prompt, (completion,), label=label, conversational=conversational)


def validate(dataset, on_invalid: str = "error") -> tuple[list[Example], ValidationReport]:
    """Check every row and normalise it to an `Example`. Raises `DataValidationError` on the first bad row
    (`on_invalid="error"`) or drops bad rows and counts them with a warning (`on_invalid="skip"`)."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    fmt = detect_format(column_names(dataset))
    if len(dataset) == 0:
        raise ValueError("the dataset has no rows")
    # The first row decides whether the file is conversational; any row that disagrees is a mixed-format error.
    first_field = "chosen" if fmt == "implicit_pairwise" else FORMATS[fmt][0]
    conversational = fmt != "alpacafarm" and _is_conversational(dataset[0][first_field])
    report = ValidationReport(fmt, conversational)
    examples = []
    for i, row in enumerate(dataset):
        try:
            examples.append(_validate_row(i, row, fmt, conversational))
        except DataValidationError as err:
            if on_invalid == "error":
                raise
            report.skip(err)
    report.kept = len(examples)
    if report.skipped:
        logger.warning("skipped %d invalid rows: %s", sum(report.skipped.values()), report.skipped)
    if not examples:
        raise ValueError(f"no valid rows left after validation: {report.skipped}")
    return examples, report


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------------------


def render_prompt(tokenizer, prompt: Any, conversational: bool) -> str:
    if not conversational:
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer, prompt: Any, completion: Any, conversational: bool, row: int, fld: str) -> str:
    if not conversational:
        return completion
    prompt_text = render_prompt(tokenizer, prompt, True)
    full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    if not full.startswith(prompt_text):
        raise DataValidationError(row, fld, "the chat template does not render the prompt as a prefix of the conversation")
    return full[len(prompt_text):]


def prompt_token_ids(tokenizer, prompt_text: str, conversational: bool) -> list[int]:
    # Chat templates write their own BOS; plain text gets the tokenizer's usual special tokens.
    ids = tokenizer(prompt_text, add_special_tokens=not conversational)["input_ids"]
    if not ids:
        # The first completion token needs a position to be predicted from.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return ids


def completion_token_ids(tokenizer, text: str, max_length: int | None) -> list[int]:
    """Completion ids ending in exactly one EOS, cut to `max_length` (a cut completion keeps no EOS)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set one (tokenizer.eos_token = ...)")
    eos_text = tokenizer.eos_token
    stripped = text.rstrip()
    if eos_text and stripped.endswith(eos_text):
        text = stripped  # the template's newline after the end-of-turn token is not part of the answer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or ids[-1] != eos:
        ids = ids + [eos]
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
    return ids


def tokenize_examples(
    examples: list[Example],
    tokenizer,
    *,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = 512,
    on_invalid: str = "error",
    report: ValidationReport | None = None,
) -> list[dict]:
    """Token ids per example: {row, prompt_ids, completion_ids: [ids per completion], label}."""
    out = []
    for ex in examples:
        try:
            prompt_text = render_prompt(tokenizer, ex.prompt, ex.conversational)
            prompt_ids = prompt_token_ids(tokenizer, prompt_text, ex.conversational)
            if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
                raise DataValidationError(
                    ex.row, "prompt", f"{len(prompt_ids)} tokens, longer than max_prompt_length={max_prompt_length}"
                )
            completions = []
            for fld, completion in zip(("chosen", "rejected") if len(ex.completions) == 2 else ("completion",),
                                       ex.completions):
                text = render_completion(tokenizer, ex.prompt, completion, ex.conversational, ex.row, fld)
                completions.append(completion_token_ids(tokenizer, text, max_completion_length))
            if len(completions) == 2 and completions[0] == completions[1]:
                raise DataValidationError(ex.row, "rejected", "tokenises identically to chosen after truncation")
        except DataValidationError as err:
            if on_invalid == "error":
                raise
            if report is not None:
                report.skip(err)
                report.kept -= 1
            continue
        out.append({"row": ex.row, "prompt_ids": prompt_ids, "completion_ids": completions, "label": ex.label})
    if not out:
        raise ValueError("no rows left after tokenisation")
    return out


@dataclass
class Prompt:
    """A prompt for generation: `text` is what reward sources see, `ids` what the policy sees."""

    prompt_id: int
    text: str
    ids: list[int]


def load_prompts(source: Any, tokenizer, *, max_prompt_length: int | None = 512, on_invalid: str = "error",
                 split: str = "train", limit: int | None = None) -> list[Prompt]:
    """Prompts from any accepted format (the prompt column; for implicit-prompt pairs, the shared prefix),
    validated and tokenised exactly as for training."""
    examples, report = validate(load_rows(source, split=split), on_invalid=on_invalid)
    prompts = []
    for ex in examples[:limit] if limit else examples:
        try:
            ids = prompt_token_ids(tokenizer, render_prompt(tokenizer, ex.prompt, ex.conversational), ex.conversational)
            if max_prompt_length is not None and len(ids) > max_prompt_length:
                raise DataValidationError(ex.row, "prompt", f"{len(ids)} tokens, longer than max_prompt_length={max_prompt_length}")
        except DataValidationError as err:
            if on_invalid == "error":
                raise
            report.skip(err)
            continue
        text = ex.prompt if not ex.conversational else "\n".join(m["content"] for m in ex.prompt if m["role"] == "user")
        prompts.append(Prompt(len(prompts), text, ids))
    if not prompts:
        raise ValueError("no prompts left after validation")
    return prompts


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
) -> PreparedData:
    """Load, validate, convert and tokenise training data for a loss of the given kind.

    kind: 'pairwise' (Pairwise Cringe, DPO family), 'binary' (binary Cringe) or 'sft'. Pairwise data serves
    binary Cringe too (chosen -> good, rejected -> bad) and SFT (chosen only); binary data serves SFT (good
    completions only) but not pairwise losses.
    """
    dataset = load_rows(source, split=split, name=name)
    examples, report = validate(dataset, on_invalid=on_invalid)
    if report.format == "prompt_only":
        raise ValueError("a prompt-only dataset has nothing to train on; use it with `cringe iterate`")
    is_pairwise = report.format != "binary"
    if kind == "pairwise" and not is_pairwise:
        raise ValueError("this loss needs pairs (prompt/chosen/rejected); the dataset is binary (prompt/completion/label)")
    if kind == "binary" and is_pairwise:
        examples = [
            Example(ex.row, ex.prompt, (c,), label=good, conversational=ex.conversational)
            for ex in examples
            for c, good in zip(ex.completions, (True, False))
        ]
    elif kind == "sft":
        examples = [
            Example(ex.row, ex.prompt, ex.completions[:1], label=True, conversational=ex.conversational)
            for ex in examples
            if is_pairwise or ex.label
        ]
    elif kind not in ("pairwise", "binary"):
        raise ValueError(f"kind must be 'pairwise', 'binary' or 'sft', got {kind!r}")
    rows = tokenize_examples(
        examples,
        tokenizer,
        max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length,
        on_invalid=on_invalid,
        report=report,
    )
    return PreparedData("pairwise" if kind == "pairwise" else "binary", rows, report)


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
