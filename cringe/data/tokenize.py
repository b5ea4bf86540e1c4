"""Tokenisation, both paths: row by row in this process, and through `Dataset.map` for large datasets (parallel,
cached); the same rows, ids and errors either way. The policy (exact prompt/completion boundary, one EOS, prompts
never cut): cringe.data's docstring. Also the prompts of the iterative loop, and rows that are token ids already."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Features, Value
from datasets.fingerprint import Hasher
from jinja2.exceptions import TemplateError

from cringe.data.formats import (
    FORMATS,
    MAP_MIN_ROWS,
    MAX_AUTO_NUM_PROC,
    ROWS_PER_PROC,
    DataValidationError,
    Example,
    ValidationReport,
    _check_kind,
    _check_on_invalid,
    _finish_validation,
    _for_kind,
    _format_of,
    _inspect,
    _is_empty,
    _skip,
    _validate_row,
    check_prompt_length,
    column_names,
    kind_selections,
    load_rows,
    prompt_rows,
    validate,
)
from cringe.errors import UserError

logger = logging.getLogger(__name__)


def _apply_chat_template(tokenizer, messages: list, add_generation_prompt: bool, tools, row: int, fld: str) -> str:
    kwargs = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except TemplateError as err:  # e.g. a template's raise_exception("roles must alternate")
        raise DataValidationError(row, fld, f"the chat template cannot render it: {err}") from None


def _render_chat(
    tokenizer, messages: list, ex: Example, fld: str, *, add_generation_prompt: bool, check_from: int, index_offset: int
) -> str:
    """Render `messages`; refuse any field of messages[check_from:] (or `tools`, with check_from 0) that the
    template leaves out, since it would be silently dropped. A field's index in its column is i + index_offset."""
    text = _apply_chat_template(tokenizer, messages, add_generation_prompt, ex.tools, ex.row, fld)

    def renders_differently(alternative, tools) -> bool:
        try:
            return _apply_chat_template(tokenizer, alternative, add_generation_prompt, tools, ex.row, fld) != text
        except DataValidationError:  # the template cannot do without it: it is used
            return True

    if ex.tools and check_from == 0 and not renders_differently(messages, None):
        raise DataValidationError(
            ex.row,
            "tools",
            "the tokenizer's chat template does not render tool definitions: they would be silently dropped",
        )
    for i in range(check_from, len(messages)):
        for key in [k for k, v in messages[i].items() if k not in ("role", "content") and not _is_empty(v)]:
            without = dict(messages[i])
            del without[key]
            if not renders_differently(messages[:i] + [without] + messages[i + 1 :], ex.tools):
                raise DataValidationError(
                    ex.row,
                    fld,
                    f"message {i + index_offset} has a '{key}' field that the tokenizer's chat template "
                    "does not render: it would be silently dropped (use a template that renders it, or "
                    "remove the field)",
                )
    return text


def _render_prompt(tokenizer, ex: Example) -> str:
    if not ex.conversational:
        return ex.prompt
    return _render_chat(
        tokenizer, list(ex.prompt), ex, ex.prompt_field, add_generation_prompt=True, check_from=0, index_offset=0
    )


def _render_completions(tokenizer, ex: Example, prompt_text: str) -> list[str]:
    """The text each completion adds after the prompt: exactly the strings that are tokenised."""
    if not ex.conversational:
        return list(ex.completions)
    texts = []
    for completion, fld in zip(ex.completions, ex.completion_fields()):
        full = _render_chat(
            tokenizer,
            list(ex.prompt) + list(completion),
            ex,
            fld,
            add_generation_prompt=False,
            check_from=len(ex.prompt),
            index_offset=ex.completion_offset - len(ex.prompt),
        )
        if not full.startswith(prompt_text):
            raise DataValidationError(
                ex.row, fld, "the chat template does not render the prompt as a prefix of the conversation"
            )
        texts.append(full[len(prompt_text) :])
    return texts


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
    check_prompt_length(prompt_ids, max_prompt_length, ex.row)
    if len(completions) == 2 and completions[0] == completions[1]:
        raise DataValidationError(ex.row, "rejected", "tokenises identically to chosen after truncation")
    return {"row": ex.row, "prompt_ids": prompt_ids, "completion_ids": completions, "label": ex.label}


def _tokenize_example(tokenizer, ex: Example, max_prompt_length: int | None, max_completion_length: int | None) -> dict:
    """One example, one tokenizer call per text: the per-row path, and the reference for `_tokenize_batch`."""
    prompt_text = _render_prompt(tokenizer, ex)
    texts = _render_completions(tokenizer, ex, prompt_text)
    prompt_ids = prompt_token_ids(tokenizer, prompt_text, ex.conversational)
    return _token_row(
        ex, prompt_ids, [completion_token_ids(tokenizer, t, max_completion_length) for t in texts], max_prompt_length
    )


def _tokenize_batch(
    tokenizer, examples: list[Example], max_prompt_length: int | None, max_completion_length: int | None
) -> list[dict | DataValidationError]:
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
    completions = iter(
        _encode(tokenizer, [_completion_text(tokenizer, t) for _, ts in good for t in ts], add_special_tokens=False)
    )
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
    # the row's other columns (IFEval's instruction_id_list and kwargs, a GRPO dataset's answer), for reward
    # sources that read them (cringe.rewards); None when the row has none
    columns: dict | None = None


def _prompt_text(ex: Example) -> str:
    """What a reward source that reads text sees of a prompt: the text, or every turn of a conversation before the
    answer, the system's included (a lone user turn as it is; otherwise each turn after its role)."""
    if not ex.conversational:
        return ex.prompt
    turns = [m for m in ex.prompt if isinstance(m.get("content"), str)]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


# What TRL's GRPOTrainer keeps out of a reward function's keyword arguments (it passes them under their own names).
NOT_COLUMNS = ("prompt", "completion", "completion_ids")


def _extra_columns(dataset) -> list[str]:
    """The columns a prompt row carries to reward sources: every one but those its format reads (the prompt, a
    pair's sides) and those TRL passes under their own names."""
    used = set(FORMATS[_format_of(dataset)]) | set(NOT_COLUMNS)
    return [c for c in column_names(dataset) if c not in used]


def load_prompts(
    source: Any,
    tokenizer,
    *,
    max_prompt_length: int | None = 512,
    on_invalid: str = "error",
    split: str = "train",
    limit: int | None = None,
) -> list[Prompt]:
    """Prompts from any accepted format but `text` (the prompt column; for implicit-prompt pairs, the shared
    prefix; for `messages`, the conversation before the last answer), validated and tokenised exactly as for
    training. Each prompt keeps its row's other columns (`Prompt.columns`), which travel with its samples to the
    reward (IFEval's `instruction_id_list` and `kwargs`, a GRPO dataset's reference answer)."""

    dataset = prompt_rows(load_rows(source, split=split))  # preference rows: only the prompt is needed
    if _format_of(dataset) == "text":
        raise UserError("a 'text' dataset has no prompts to generate from")
    examples, report = validate(dataset, on_invalid=on_invalid)
    extra = _extra_columns(dataset)
    prompts = []
    for ex in examples[:limit] if limit else examples:
        try:
            ids = prompt_token_ids(tokenizer, _render_prompt(tokenizer, ex), ex.conversational)
            check_prompt_length(ids, max_prompt_length, ex.row)
        except DataValidationError as err:
            _skip(err, on_invalid, report)
            continue
        messages = [dict(m) for m in ex.prompt] if ex.conversational else None
        columns = None
        if extra:
            row = dataset[ex.row]
            columns = {c: row.get(c) for c in extra}  # a list of dicts may leave a key out of some rows
        prompts.append(Prompt(len(prompts), _prompt_text(ex), ids, messages, columns))
    if not prompts:
        raise UserError("no prompts left after validation")
    return prompts


# ----- large datasets: Dataset.map ----------------------------------------------------------------------


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


def _tokenize_rows(
    batch,
    indices,
    tokenizer,
    fmt: str,
    conversational: bool,
    kind: str,
    max_prompt_length: int | None,
    max_completion_length: int | None,
) -> dict[str, list]:
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
    """The validation and tokenisation code's source: a change to it must not reuse old cached results."""
    if not _SOURCE_HASH:
        digest = hashlib.sha256()
        for module in (Path(__file__).with_name("formats.py"), Path(__file__)):
            digest.update(module.read_bytes())
        _SOURCE_HASH.append(digest.hexdigest())
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


def _prepare_with_map(
    dataset,
    tokenizer,
    *,
    kind: str,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    on_invalid: str,
    num_proc: int | None,
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
    common = dict(
        batched=True, with_indices=True, remove_columns=dataset.column_names, num_proc=procs if procs > 1 else None
    )
    settings = {"fmt": fmt, "conversational": conversational}
    checked = dataset.map(
        _validate_batch,
        fn_kwargs=settings,
        features=Features({"field": Value("string"), "problem": Value("string")}),
        new_fingerprint=_fingerprint(dataset, "validate", settings),
        desc="validating rows",
        **common,
    )
    report = ValidationReport(fmt, conversational)
    checked = checked.to_dict()
    for i, (fld, problem) in enumerate(zip(checked["field"], checked["problem"])):
        if problem is not None:
            _skip(DataValidationError(i, fld, problem), on_invalid, report)
    report.kept = len(dataset) - sum(report.skipped.values())
    _finish_validation(report)

    settings.update(kind=kind, max_prompt_length=max_prompt_length, max_completion_length=max_completion_length)
    features = Features(
        {
            "row": Value("int64"),
            "prompt_ids": List(Value("int32")),
            "completion_ids": List(List(Value("int32"))),
            "label": Value("bool"),
            "field": Value("string"),
            "problem": Value("string"),
        }
    )
    tokens = dataset.map(
        _tokenize_rows,
        fn_kwargs=dict(settings, tokenizer=tokenizer),
        features=features,
        new_fingerprint=_fingerprint(dataset, "tokenize", settings, tokenizer),
        desc="tokenising rows",
        **common,
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


# ----- training data --------------------------------------------------------------------------------


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
        if (
            not isinstance(completions, list)
            or len(completions) not in (1, 2)
            or not all(isinstance(c, list) and c for c in completions)
        ):
            raise DataValidationError(i, "completion_ids", "expected one or two non-empty lists of token ids")
        out.append(
            {
                "row": row.get("row", i),
                "prompt_ids": row["prompt_ids"],
                "completion_ids": completions,
                "label": row.get("label"),
            }
        )
    pairs = len(out[0]["completion_ids"]) == 2
    if any((len(r["completion_ids"]) == 2) != pairs for r in out):
        raise UserError("token-id rows mix pairs and single completions")
    if kind == "pairwise" and not pairs:
        raise UserError("this loss needs pairs; the token-id rows hold single completions")
    if not pairs and kind == "binary" and not all(isinstance(r["label"], bool) for r in out):
        raise UserError("binary token-id rows need a boolean 'label'")
    out = [
        {**r, "completion_ids": [r["completion_ids"][i] for i in keep], "label": label}
        for r in out
        for keep, label in kind_selections(len(r["completion_ids"]), r["label"], kind)
    ]
    report = ValidationReport("token_ids", False, kept=len(out))
    return PreparedData("pairwise" if kind == "pairwise" else "binary", out, report)
