"""Verifiable instruction following (IFEval, Zhou et al. 2023) as a reward: the adapter to `if-verifiable`'s checkers.

A prompt row is in IFEval's format: `key`, `prompt` (IFEval's text, or our loop's chat messages),
`instruction_id_list` and `kwargs` (one dict of arguments per instruction). The checkers and the loose variants
of a response are the package's own (`if_verifiable.ifeval`, a copy of Google's IFEval code, the same checkers
as lm-eval's `tasks.ifeval`); this module adds what a reward needs around them:

* validation before anything is sampled (`validate_rows`): a checker given a missing or unusable argument
  silently draws a random one (`random.randint`), so every instruction's arguments must be exactly the ones it
  declares, of the declared kind, and the checker must keep them (None values, which Arrow adds when it unifies
  the rows' dicts, are dropped first);
* per-instruction results, strict and loose, for each response (`check`, `score_rows`), and IFEval's four
  accuracies (`accuracies`): prompt-level and instruction-level, each strict and loose. Instruction-level
  accuracy is a mean over instructions, not over per-response fractions, so the per-instruction results are kept.

Nothing downloads: `length_constraints:number_sentences` and `change_case:capital_word_frequency` are refused,
since their checkers need nltk's punkt data (the only ones that do). langdetect, behind the `change_case:english_*` and `language:response_language`
checks, is seeded so that the same text always gets the same verdict.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from cringe.errors import UserError
from cringe.evaluate import _percentile_interval, format_table

INSTALL_HINT = "pip install 'pairwise-cringe[instructions]' (if-verifiable==0.1.2, which needs Python >= 3.11)"

UNSUPPORTED = {
    "length_constraints:number_sentences": "its checker needs nltk's punkt sentence data, which is a download",
    "change_case:capital_word_frequency": "its checker needs nltk's punkt data (word_tokenize), which is a download",
}

# Arguments whose checkers compare numbers: a string there would fail only when a response is checked.
INTEGER_ARGS = {
    "num_sentences",
    "num_paragraphs",
    "num_words",
    "nth_paragraph",
    "num_placeholders",
    "num_bullets",
    "num_highlights",
    "num_sections",
    "frequency",
    "let_frequency",
    "capital_frequency",
}
LIST_ARGS = {"keywords", "forbidden_words"}


@functools.lru_cache(maxsize=1)
def package() -> SimpleNamespace:
    """The checkers' package, imported once: `registry` (id -> checker class, unsupported ids left out),
    `conflicts` (id -> the ids it cannot be combined with, symmetric), `loose_variants`, `count_words`,
    `word_list` (IFEval's keyword list)."""
    try:
        import langdetect
        from if_verifiable.common import get_loose_transformations
        from if_verifiable.ifeval import instructions_registry, instructions_util
    except ImportError as err:
        raise UserError(f"instruction checks need the `instructions` extra: {INSTALL_HINT} ({err})") from err
    langdetect.DetectorFactory.seed = 0
    registry = {k: v for k, v in instructions_registry.INSTRUCTION_DICT.items() if k not in UNSUPPORTED}
    # conflict_make fills in the reverse direction in place: on a copy, to leave the package's table as it is.
    conflicts = instructions_registry.conflict_make(
        {k: set(v) for k, v in instructions_registry.INSTRUCTION_CONFLICTS.items()}
    )
    return SimpleNamespace(
        registry=registry,
        conflicts={k: frozenset(v) for k, v in conflicts.items() if k in registry},
        loose_variants=get_loose_transformations,
        count_words=instructions_util.count_words,
        word_list=tuple(instructions_util.WORD_LIST),
    )


def declared_args(instruction_id: str) -> list[str]:
    return list(package().registry[instruction_id](instruction_id).get_instruction_args_keys())


def prompt_text(prompt: Any) -> str:
    """IFEval's prompt text of a row: the text itself, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return ""


def _same(given: Any, kept: Any) -> bool:
    """Whether a checker kept an argument (it strips and lower-cases some strings, sorts and dedupes word lists)."""
    if isinstance(given, list):
        words = lambda values: sorted({str(v).strip().lower() for v in values})  # noqa: E731
        return isinstance(kept, list) and words(given) == words(kept)
    if isinstance(given, str):
        return isinstance(kept, str) and given.strip().lower() == kept.strip().lower()
    return given == kept


def _kind_problem(name: str, value: Any) -> str | None:
    if name in INTEGER_ARGS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{name} must be an integer, got {value!r}"
    if name in LIST_ARGS:
        ok = isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
        return None if ok else f"{name} must be a non-empty list of words, got {value!r}"
    return None if isinstance(value, str) and value.strip() else f"{name} must be a non-empty string, got {value!r}"


def _build_checkers(index: int, row: Any) -> tuple[list[str], list[dict], list]:
    """One row's instruction ids, its arguments with None values dropped, and its built checkers; a UserError
    naming the row and field for anything a checker would not use exactly as given."""
    if not isinstance(row, dict):
        raise UserError(
            f"row {index}: expected an object with instruction_id_list and kwargs, got {type(row).__name__}"
        )
    where = f"row {index}" + (f" (key {row['key']!r})" if "key" in row else "")
    ids = row.get("instruction_id_list")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise UserError(
            f"{where}, field 'instruction_id_list': expected a non-empty list of instruction ids, got {ids!r}"
        )
    registry = package().registry
    for j, instruction_id in enumerate(ids):
        if instruction_id in UNSUPPORTED:
            raise UserError(
                f"{where}, field 'instruction_id_list[{j}]': {instruction_id!r} is not supported: {UNSUPPORTED[instruction_id]}"
            )
        if instruction_id not in registry:
            raise UserError(
                f"{where}, field 'instruction_id_list[{j}]': {instruction_id!r} is not an IFEval instruction id"
            )
    kwargs = row.get("kwargs")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise UserError(
            f"{where}, field 'kwargs': expected a list of {len(ids)} objects (one per instruction), got {kwargs!r}"
        )
    cleaned, checkers = [], []
    for j, (instruction_id, given) in enumerate(zip(ids, kwargs)):
        field = f"{where}, field 'kwargs[{j}]' ({instruction_id})"
        args = {k: v for k, v in given.items() if v is not None}
        declared = declared_args(instruction_id)
        missing, unknown = [a for a in declared if a not in args], [a for a in args if a not in declared]
        if missing or unknown:
            says = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "",
                )
                if part
            )
            raise UserError(f"{field}: {says} (it takes exactly: {', '.join(declared) or 'no arguments'})")
        for name, value in args.items():
            problem = _kind_problem(name, value)
            if problem:
                raise UserError(f"{field}: {problem}")
        checker = registry[instruction_id](instruction_id)
        try:
            checker.build_description(**args)
        except (TypeError, ValueError) as err:
            raise UserError(f"{field}: {err}") from err
        kept = checker.get_instruction_args() or {}
        replaced = [name for name in args if not _same(args[name], kept.get(name))]
        if replaced:
            raise UserError(
                f"{field}: the checker cannot use {', '.join(f'{n}={args[n]!r}' for n in replaced)} "
                "(it would check a random value instead)"
            )
        if "prompt" in kept:  # as the package does for checkers that read the request
            checker.build_description(prompt=prompt_text(row.get("prompt")))
        cleaned.append(args)
        checkers.append(checker)
    return ids, cleaned, checkers


def validate_rows(rows: Sequence[dict]) -> list[dict]:
    """Check every row before anything is sampled; returns the rows with None-valued arguments dropped."""
    out = []
    for index, row in enumerate(rows):
        _, kwargs, _ = _build_checkers(index, row)
        out.append({**row, "kwargs": kwargs})
    return out


def _follows(checkers: list, response: str) -> tuple[list[bool], list[bool]]:
    """Strict and loose results per instruction. Strict checks the response as it is; loose passes an instruction
    when any of the package's variants (asterisks removed, first and/or last line dropped) does. An empty
    response follows nothing."""
    if not response.strip():
        return [False] * len(checkers), [False] * len(checkers)
    variants = [v for v in package().loose_variants(response) if v.strip()]
    strict = [bool(c.check_following(response)) for c in checkers]
    loose = [s or any(c.check_following(v) for v in variants) for c, s in zip(checkers, strict)]
    return strict, loose


def check(
    response: str, instruction_id_list: list[str], kwargs: list[dict], strict: bool = False, prompt: Any = ""
) -> list[bool]:
    """Per instruction, whether `response` follows it (loose unless `strict`)."""
    _, _, checkers = _build_checkers(
        0, {"prompt": prompt, "instruction_id_list": instruction_id_list, "kwargs": kwargs}
    )
    strict_results, loose_results = _follows(checkers, response)
    return strict_results if strict else loose_results


def score_rows(
    rows: Sequence[dict], responses: Sequence[str], *, strict: bool = False, min_words: int = 0
) -> list[dict]:
    """One result per response (rows[i] is the prompt row responses[i] answers):
    {key, instruction_id_list, strict: [bool], loose: [bool], score, label, words}.

    `score` is the fraction of instructions followed (loose, or strict with `strict`), the reward; `label` is
    "all followed, strict", the binary label. A response of fewer than `min_words` words scores 0 and is labelled
    False whatever it follows: checks of form alone (no commas, lower case, fewer than N words) pass a near-empty
    answer. The per-instruction results stay as the checkers found them, so IFEval's accuracies are unchanged."""
    if len(rows) != len(responses):
        raise UserError(f"{len(rows)} prompt rows but {len(responses)} responses")
    count_words = package().count_words
    results = []
    for index, (row, response) in enumerate(zip(rows, responses)):
        ids, _, checkers = _build_checkers(index, row)
        strict_results, loose_results = _follows(checkers, response)
        words = count_words(response)
        followed = strict_results if strict else loose_results
        long_enough = words >= min_words
        results.append(
            {
                "key": row.get("key", index),
                "instruction_id_list": list(ids),
                "strict": strict_results,
                "loose": loose_results,
                "score": sum(followed) / len(followed) if long_enough else 0.0,
                "label": all(strict_results) and long_enough,
                "words": words,
            }
        )
    return results


def _ratio_with_ci(groups: list[tuple[int, int]], seed: int, n_boot: int, level: float) -> dict:
    """sum(hits) / sum(counts) over groups, with a percentile bootstrap interval that resamples whole groups."""
    hits, total = sum(h for h, _ in groups), sum(n for _, n in groups)
    rng = random.Random(seed)
    ratios = []
    for _ in range(n_boot):
        drawn = [groups[rng.randrange(len(groups))] for _ in groups]
        ratios.append(sum(h for h, _ in drawn) / max(1, sum(n for _, n in drawn)))
    low, high = _percentile_interval(sorted(ratios), level)
    return {"mean": hits / total, "ci_low": low, "ci_high": high, "n": total}


def accuracies(results: Sequence[dict], *, seed: int = 0, n_boot: int = 2_000, level: float = 0.95) -> dict:
    """IFEval's four accuracies from `score_rows` results: prompt_level_{strict,loose} (share of responses that
    follow all their instructions) and instruction_level_{strict,loose} (share of all instructions followed).
    Each is {mean, ci_low, ci_high, n}; the interval resamples prompts (results sharing a key), since several
    responses to one prompt, and the instructions within one response, are not independent."""
    if not results:
        raise ValueError("no results to compute accuracies from")
    by_prompt: dict[Any, list[dict]] = {}
    for r in results:
        by_prompt.setdefault(r["key"], []).append(r)
    out = {}
    for mode in ("strict", "loose"):
        prompt_level = [(sum(all(r[mode]) for r in rs), len(rs)) for rs in by_prompt.values()]
        instruction_level = [
            (sum(sum(r[mode]) for r in rs), sum(len(r[mode]) for r in rs)) for rs in by_prompt.values()
        ]
        out[f"prompt_level_{mode}"] = _ratio_with_ci(prompt_level, seed, n_boot, level)
        out[f"instruction_level_{mode}"] = _ratio_with_ci(instruction_level, seed, n_boot, level)
    return out


def per_type(results: Sequence[dict]) -> dict[str, dict]:
    """Instruction-level accuracy of each instruction type, strict and loose: {id: {strict, loose, n}}, n the
    instructions of that type checked (over all responses)."""
    counts: dict[str, list[int]] = {}
    for r in results:
        for instruction_id, strict, loose in zip(r["instruction_id_list"], r["strict"], r["loose"]):
            c = counts.setdefault(instruction_id, [0, 0, 0])
            c[0], c[1], c[2] = c[0] + strict, c[1] + loose, c[2] + 1
    return {k: {"strict": s / n, "loose": lo / n, "n": n} for k, (s, lo, n) in sorted(counts.items())}


def evaluation_results(samples, score_rows: Sequence[dict]) -> list[dict] | None:
    """`score_rows`-like results of a scored samples file (samples with a `prompt_id`; their scores.jsonl rows),
    keyed by prompt, or None when the reward that scored them kept no per-instruction results."""
    if not score_rows or not all(isinstance(r.get("instructions"), dict) for r in score_rows):
        return None
    return [{**r["instructions"], "key": s.prompt_id} for s, r in zip(samples, score_rows)]


def evaluation_summary(results: Sequence[dict], *, seed: int = 0) -> dict:
    """One side of an evaluation: IFEval's four accuracies with 95% intervals (`accuracies`), the responses and
    prompts they cover, and the accuracy per instruction type (`per_type`)."""
    return {
        **accuracies(results, seed=seed),
        "responses": len(results),
        "prompts": len({r["key"] for r in results}),
        "per_type": per_type(results),
    }


ACCURACIES = (
    ("prompt strict", "prompt_level_strict"),
    ("prompt loose", "prompt_level_loose"),
    ("instruction strict", "instruction_level_strict"),
    ("instruction loose", "instruction_level_loose"),
)


def accuracy_tables(evaluations: Sequence[dict], label_key: str, baseline: str) -> str:
    """Markdown tables of the `instructions` blocks of evaluations (cringe.loop.evaluation's, each named by its
    `label_key`): IFEval's four accuracies of the baseline (the first evaluation's) and of each policy, with 95%
    intervals; then instruction-level accuracy per type, strict / loose. "" when none has the block."""
    blocks = [(e[label_key], e["instructions"]) for e in evaluations if e.get("instructions")]
    if not blocks:
        return ""
    sides = [(baseline, blocks[0][1]["baseline"])] + [(str(label), block["policy"]) for label, block in blocks]
    cell = lambda a: f"{a['mean']:.3f} ({a['ci_low']:.3f}..{a['ci_high']:.3f})"  # noqa: E731
    accuracy_rows = [
        {"label": label, "n": side["prompts"], **{key: cell(side[key]) for _, key in ACCURACIES}}
        for label, side in sides
    ]
    types = sorted({t for _, side in sides for t in side["per_type"]})
    type_rows = [
        {
            "type": t,
            "n": sides[0][1]["per_type"].get(t, {}).get("n", ""),
            **{
                label: f"{side['per_type'][t]['strict']:.2f} / {side['per_type'][t]['loose']:.2f}"
                if t in side["per_type"]
                else "—"
                for label, side in sides
            },
        }
        for t in types
    ]
    return "\n\n".join(
        [
            "IFEval accuracies (95% intervals, resampling prompts):",
            format_table(accuracy_rows, [("model", "label"), ("prompts", "n"), *ACCURACIES]),
            "Instruction-level accuracy per instruction type, strict / loose (n: the baseline's instructions):",
            format_table(type_rows, [("instruction", "type"), ("n", "n"), *((label, label) for label, _ in sides)]),
        ]
    )
