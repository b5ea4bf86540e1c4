"""A policy against a file of reference outputs, the way AlpacaEval and AlpacaFarm evaluate.

Input: a JSON (or JSONL) list of rows {instruction, output, generator[, input, dataset]}: AlpacaEval's
`alpaca_eval.json` and its model-output files, or AlpacaFarm's `alpaca_farm_evaluation` rows (whose `input`, when
not empty, follows the instruction after a blank line, as AlpacaFarm formats it). The policy answers every
instruction once (a chat turn when its tokenizer has a chat template); each answer is judged against the row's
reference `output`:

  * a judge (`type: judge`, cringe.rewards.PairwiseJudge) sees the two in both orders (position bias cancels);
  * a reward model or function scores both, the higher wins (a tie is half a win).

Written: the policy's outputs in AlpacaEval's format (`alpaca_eval --model_outputs FILE` scores them with
AlpacaEval's own judges) and the judgements in AlpacaEval's annotation format (preference 1: the reference is
better, 2: the policy's output is, 1.5: a tie).

Length-controlled win rate: AlpacaEval's GLM (`alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`) is
fitted against per-instruction difficulties that AlpacaEval publishes for its own 805 instructions (downloaded
from the Hub by that function), so it applies only to that set, in its order, with the `alpaca-eval` package
installed and Hub access. Elsewhere the result says why it was not computed; the raw win rate and the two
sides' lengths are always reported, so a win bought with length shows.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from cringe.data import load_prompts
from cringe.data.formats import (
    FORMATS,
    instruction_text,  # noqa: F401 - part of this module's interface (tests, callers)
)
from cringe.durable.files import read_json, read_jsonl, write_json
from cringe.errors import UserError
from cringe.evaluate import _outcome, text_metrics, win_rate_from_outcomes
from cringe.generation import Sample, SamplingConfig
from cringe.loop.stages import carry_prompt, open_sampler, score_samples
from cringe.models import free_memory, load_tokenizer, resolve_device
from cringe.rewards import check_prompts, check_reward_spec, load_reward_source

logger = logging.getLogger(__name__)

ALPACA_EVAL_SIZE = 805  # instructions in AlpacaEval (= AlpacaFarm's evaluation set)


def is_outputs_file(path: str) -> bool:
    """True for an existing .json/.jsonl file: a baseline given as outputs, not as a model."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in (".json", ".jsonl")


def read_outputs(path: str) -> list[dict]:
    """The rows of an AlpacaEval/AlpacaFarm outputs file, checked: instruction and output non-empty strings."""

    rows = read_jsonl(path) if str(path).lower().endswith(".jsonl") else read_json(path)
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected a non-empty JSON list of {{instruction, output, generator}} rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
        for field in ("instruction", "output"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{path}: row {i}, field '{field}': expected a non-empty string, got {value!r}")
        if row.get("input") is not None and not isinstance(row["input"], str):
            raise UserError(f"{path}: row {i}, field 'input': expected a string")
    return rows


# What an outputs row holds besides its prompt: none of it travels to the reward as a column.
OUTPUT_FIELDS = frozenset({"output", "generator"} | {c for columns in FORMATS.values() for c in columns})


def row_columns(rows: list[dict]) -> list[dict]:
    """The outputs rows' other columns (IFEval's instruction_id_list and kwargs, a dataset name), which travel with
    each prompt to reward sources that read them, as a prompts file's do; a column some rows lack is None there,
    as in a prompts file read through Arrow."""
    names = sorted({k for row in rows for k in row} - OUTPUT_FIELDS)
    return [{k: row.get(k) for k in names} for row in rows]


def outputs_rows(instructions: list[dict], outputs: list[str], generator: str) -> list[dict]:
    """AlpacaEval's model-outputs format: {instruction, output, generator, dataset}."""
    return [
        {
            "instruction": instruction_text(r),
            "output": o,
            "generator": generator,
            **({"dataset": r["dataset"]} if "dataset" in r else {}),
        }
        for r, o in zip(instructions, outputs)
    ]


def annotation_rows(
    rows: list[dict], outputs: list[str], outcomes: list[float | None], generator: str, annotator: str
) -> list[dict]:
    """AlpacaEval's annotation format: output_1 the reference, output_2 the policy's; preference 1 + P(policy
    better), so 1 = reference, 2 = policy, 1.5 = tie; None where the judge gave no verdict."""
    return [
        {
            "index": i,
            "instruction": instruction_text(r),
            "output_1": r["output"],
            "output_2": o,
            "generator_1": r.get("generator", "reference"),
            "generator_2": generator,
            "annotator": annotator,
            "preference": None if w is None else 1.0 + w,
        }
        for i, (r, o, w) in enumerate(zip(rows, outputs, outcomes))
    ]


def length_controlled(annotations: list[dict], n_reference: int) -> dict:
    """AlpacaEval's length-controlled win rate where it applies (see the module docstring), else the reason."""
    if n_reference != ALPACA_EVAL_SIZE or len(annotations) != ALPACA_EVAL_SIZE:
        return {
            "computed": False,
            "reason": f"AlpacaEval's GLM is fitted to its own {ALPACA_EVAL_SIZE} "
            f"instructions; these are {len(annotations)} of {n_reference}",
        }
    try:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate
    except ImportError:
        return {"computed": False, "reason": "the alpaca-eval package is not installed (pip install alpaca-eval)"}
    import pandas as pd

    decided = pd.DataFrame([a for a in annotations if a["preference"] is not None])
    try:
        metrics = get_length_controlled_winrate(decided, save_weights_dir=None, is_add_glm_preference_inplace=False)
    except Exception as err:  # noqa: BLE001 - its download or fit failing must not lose the raw results
        return {"computed": False, "reason": f"alpaca_eval failed: {type(err).__name__}: {err}"}
    return {
        "computed": True,
        "length_controlled_win_rate": metrics["length_controlled_winrate"] / 100,
        "lc_standard_error": metrics["lc_standard_error"] / 100,
        "alpaca_eval_win_rate": metrics["win_rate"] / 100,
    }


def judge_outcomes(reward, prompts: list, policy: list, reference: list) -> list[float | None]:
    """Per row, P(policy better than the reference): a judge's both-order verdict, or 1 / 0.5 / 0 from two scores
    (None where either side got no reward).

    prompts: texts, or cringe.data.Prompt (carrying the row's other columns); policy and reference: completion
    texts, or cringe.generation.Sample (with their token ids). Scores come from the loop's own scoring of samples
    (cringe.loop.stages.score_samples), so a source that reads whole samples (the instructions reward, a TRL-style
    function reading the row's columns) scores both sides as it scores a round's samples."""

    if hasattr(reward, "compare"):
        texts = [p if isinstance(p, str) else p.text for p in prompts]
        outcomes = reward.compare(texts, _texts(policy), _texts(reference))
        reward.check_readable()
        return outcomes
    samples = [
        _as_sample(i, side, prompt, answer)
        for side, answers in enumerate((policy, reference))
        for i, (prompt, answer) in enumerate(zip(prompts, answers))
    ]
    scores = score_samples(reward, samples)
    return [
        None if p is None or r is None else _outcome(p, r) for p, r in zip(scores[: len(policy)], scores[len(policy) :])
    ]


def _texts(answers: list) -> list[str]:
    return [a if isinstance(a, str) else a.completion for a in answers]


def _as_sample(row: int, side: int, prompt, answer) -> Sample:
    """One answer to row `row` as a scored sample: sample 0 the policy's, sample 1 the reference's."""
    if isinstance(answer, Sample):
        sample = replace(answer, prompt_id=row, sample_id=side)
    else:
        sample = Sample(row, side, prompt_ids=[], completion_ids=[], completion=answer, finish_reason="stop")
    if isinstance(prompt, str):
        sample.prompt, sample.prompt_messages, sample.columns = prompt, None, None
    else:
        carry_prompt(sample, prompt)
    return sample


def evaluate_against_outputs(
    policy: str,
    outputs_path: str,
    reward_spec: dict,
    *,
    max_new_tokens: int = 512,
    max_prompts: int | None = None,
    dtype: str | None = None,
    device: str = "auto",
    seed: int = 0,
    trust_remote_code: bool = False,
    generator: str | None = None,
    export: str | None = None,
    temperature: float = 0.7,
    max_prompt_length: int = 2048,
):
    """The policy's answer to each instruction of `outputs_path`, judged against the row's output. Returns
    {n_prompts, undecided, win_rate: {...}, length_controlled: {...}, text, reference_text, files}."""

    check_reward_spec(reward_spec)
    rows = read_outputs(outputs_path)
    n_reference = len(rows)
    rows = rows[:max_prompts] if max_prompts else rows
    generator = generator or Path(policy).name
    device = resolve_device(device)
    tokenizer = load_tokenizer(policy, trust_remote_code)
    texts = [instruction_text(r) for r in rows]
    chat = bool(getattr(tokenizer, "chat_template", None))
    prompts = load_prompts(
        [{"prompt": [{"role": "user", "content": t}] if chat else t, **c} for t, c in zip(texts, row_columns(rows))],
        tokenizer,
        max_prompt_length=max_prompt_length,
    )
    check_prompts(reward_spec, prompts)  # the instructions reward: IFEval's columns on every row, before sampling
    sampler = open_sampler(
        "transformers", policy, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code
    )
    sampling = SamplingConfig(n=1, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    samples = sampler.sample([p.ids for p in prompts], sampling)
    del sampler
    free_memory()
    outputs = [s.completion for s in samples]
    reference_ids = [tokenizer(r["output"], add_special_tokens=False)["input_ids"] for r in rows]
    references = [
        Sample(i, 1, prompt_ids=p.ids, completion_ids=ids, completion=r["output"], finish_reason="stop")
        for i, (p, r, ids) in enumerate(zip(prompts, rows, reference_ids))
    ]
    reward = load_reward_source(reward_spec, device=device)
    outcomes = judge_outcomes(reward, prompts, samples, references)
    decided = [o for o in outcomes if o is not None]
    if not decided:
        raise UserError("the judge decided none of the comparisons")
    annotator = reward_spec.get("model") or reward_spec.get("path") or reward_spec.get("function")
    annotations = annotation_rows(rows, outputs, outcomes, generator, str(annotator))
    export = Path(export) if export else None
    files = {}
    if export is not None:
        write_json(export, outputs_rows(rows, outputs, generator))
        annotations_path = export.with_name(export.stem + "-annotations.json")
        write_json(annotations_path, annotations)
        files = {"model_outputs": str(export), "annotations": str(annotations_path)}
    reference_tokens = [len(ids) for ids in reference_ids]
    return {
        "n_prompts": len(rows),
        "undecided": len(outcomes) - len(decided),
        "generator": generator,
        "reference": str(outputs_path),
        "win_rate": win_rate_from_outcomes(decided, seed=seed),
        "length_controlled": length_controlled(annotations, n_reference),
        "text": text_metrics(outputs, [s.num_tokens for s in samples], [s.finish_reason for s in samples]),
        "reference_text": {"length_tokens": sum(reference_tokens) / len(reference_tokens)},
        "files": files,
    }


def report(result: dict) -> str:
    """A few lines for the terminal."""
    w, lc = result["win_rate"], result["length_controlled"]
    lines = [
        f"win rate of {result['generator']} vs the reference outputs of {result['reference']}: "
        f"{w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}..{w['ci_high']:.3f}, n={w['n']}, "
        f"undecided {result['undecided']})",
        f"length: {result['text']['length_tokens']:.1f} tokens (reference "
        f"{result['reference_text']['length_tokens']:.1f}), truncated {result['text']['truncated_rate']:.1%}",
        (
            f"length-controlled win rate (alpaca_eval): {lc['length_controlled_win_rate']:.3f}"
            if lc["computed"]
            else f"length-controlled win rate: not computed ({lc['reason']})"
        ),
    ]
    lines += [f"{name}: {path}" for name, path in result["files"].items()]
    return "\n".join(lines)
