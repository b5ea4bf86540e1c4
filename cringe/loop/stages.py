"""The loop's units of work: sample completions, score them, log-probs for KL, a policy evaluated against a
baseline. `cringe iterate` chains them round after round, in its own process or each stage in a process of its
own (`cringe sample`, `cringe score`); `cringe evaluate` uses them alone.

The sampling stage writes one shard of SHARD_PROMPTS prompts at a time (each an atomic file), so a killed stage
resumes from its last finished shard; the output file appears, complete, only when every shard is done.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from cringe.durable.answerlog import answers_kept
from cringe.durable.files import read_jsonl, write_jsonl
from cringe.durable.integrity import shard_is_complete
from cringe.errors import UserError
from cringe.evaluate import sequence_logprobs
from cringe.generation import Sample, TransformersSampler, VLLMSampler, resolve_backend
from cringe.models import default_dtype, engine_path, load_model, resolve_device

logger = logging.getLogger(__name__)

SHARD_PROMPTS = 64  # prompts per sampling shard: the unit of resume inside a sampling stage


def select_prompts(prompts: list, start: int = 0, count: int | None = None) -> list:
    """`count` prompts from position `start`, wrapping around (a round's slice); all of them when count is None.
    Prompt ids stay positions in the full list."""
    if count is None:
        return prompts
    if count > len(prompts):
        raise UserError(f"{count} prompts asked for (round_prompts / count) but only {len(prompts)} prompts")
    start %= len(prompts)
    return (prompts + prompts)[start : start + count]


def prompt_slice(prompts: list, everything: list) -> dict:
    """{start, count} such that select_prompts(everything, start, count) gives `prompts` (select_prompts'
    inverse): how a sampling job names its prompts."""
    ids = [p.prompt_id for p in prompts]
    if [p.prompt_id for p in everything] == ids:
        return {"start": 0, "count": None}
    if [p.prompt_id for p in select_prompts(everything, ids[0], len(ids))] != ids:
        raise ValueError(f"the prompts {ids[:3]}... are not a (wrapping) slice of the prompt list")
    return {"start": ids[0], "count": len(ids)}


def _contiguous_runs(prompts):
    """Split prompts into runs of consecutive prompt ids (a wrapped round slice has two)."""
    runs: list[list] = []
    for p in prompts:
        if runs and p.prompt_id == runs[-1][-1].prompt_id + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def sample_to_file(
    prompts,
    sampling,
    out_path: Path,
    open_sampler,
    *,
    shard_prompts: int = SHARD_PROMPTS,
    rank: int = 0,
    world: int = 1,
    barrier=None,
):
    """Sample `prompts` (cringe.data.Prompt) with the sampler `open_sampler()` returns (opened only if a shard is
    missing), shard by shard, into out_path. Returns the samples (on process 0; [] on the others). Each sample
    carries its prompt's text.

    Over `world` processes, process `rank` samples shards rank, rank + world, ...; every shard is seeded from its
    prompt positions alone, so the file is the one a single process writes. Process 0 joins the shards after
    `barrier()`."""

    out_path = Path(out_path)
    shard_dir = out_path.parent / f".{out_path.stem}-shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    by_id = {p.prompt_id: p for p in prompts}
    starts = list(range(0, len(prompts), shard_prompts))
    sampler = None
    try:
        for index, start in enumerate(starts):
            shard = shard_dir / f"shard-{start:07d}.jsonl"
            rows = len(prompts[start : start + shard_prompts]) * sampling.n
            # A shard damaged since it was written (a kill mid-copy, a full disk) is sampled again: seeded by
            # position, it comes out as it was.
            if index % world != rank or shard_is_complete(shard, rows):
                continue
            if sampler is None:
                sampler = open_sampler()
            drawn = []
            for run in _contiguous_runs(prompts[start : start + shard_prompts]):
                drawn += sampler.sample([p.ids for p in run], sampling, prompt_ids_offset=run[0].prompt_id)
            for s in drawn:
                carry_prompt(s, by_id[s.prompt_id])
            write_jsonl(shard, [s.to_dict() for s in drawn])
    finally:
        if sampler is not None and hasattr(sampler, "close"):
            sampler.close()
    if barrier is not None:
        barrier()
    if rank != 0:
        return []
    samples = [Sample.from_dict(d) for start in starts for d in read_jsonl(shard_dir / f"shard-{start:07d}.jsonl")]
    write_jsonl(out_path, [s.to_dict() for s in samples])
    shutil.rmtree(shard_dir, ignore_errors=True)
    return samples


def open_sampler(
    backend: str,
    model_spec: str,
    tokenizer,
    *,
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    engine_options: dict | None = None,
    new_tokens: int | None = None,
):
    """A sampler for `model_spec`: transformers' generate on `device`, or one vLLM engine (engine_options go to
    vllm.LLM; its dtype defaults to `dtype`). new_tokens, the stage's size, lets `backend: auto` weigh vLLM's
    start-up on a CPU (cringe.generation.resolve_backend)."""

    backend = resolve_backend(backend, new_tokens)
    device = resolve_device(device)
    dtype = default_dtype(dtype, device)
    if backend == "vllm":
        options = {"dtype": dtype, "trust_remote_code": trust_remote_code, **(engine_options or {})}
        logger.info("vLLM engine for %s with %s", model_spec, options)
        return VLLMSampler(engine_path(model_spec), tokenizer, **options)
    if engine_options:
        raise UserError(
            f"engine options {sorted(engine_options)} are for the vllm backend; this stage samples with transformers"
        )
    return TransformersSampler(load_model(model_spec, tokenizer, dtype, trust_remote_code, device=device), tokenizer)


def score_to_file(reward, samples, out_path: Path, prompts=None) -> list[float | None]:
    """score_records, written to out_path as scores.jsonl rows; returns the scores. A judge's answers are kept
    beside out_path as they arrive (cringe.durable.answerlog), so a stage that fails midway is resumed by asking
    only the rest."""

    with answers_kept(reward, out_path):
        records = score_records(reward, samples, prompts)
        scores = [r["score"] for r in records]
        write_jsonl(out_path, per_sample(scores, samples, details=records))
    return scores


def carry_prompt(sample, prompt) -> None:
    """What a sample carries of its prompt (cringe.data.Prompt) for the reward: its text, its messages, the row's
    other columns."""
    sample.prompt, sample.prompt_messages, sample.columns = prompt.text, prompt.messages, prompt.columns


def with_prompt_text(samples, prompts):
    """The samples, each carrying its prompt's text, messages and columns: those written before samples carried
    them get them from `prompts` (cringe.data.Prompt, matched by prompt id)."""
    by_id = {p.prompt_id: p for p in prompts}

    def lacking(s) -> bool:
        prompt = by_id.get(s.prompt_id)
        return s.prompt is None or (s.columns is None and prompt is not None and prompt.columns is not None)

    to_fill = [s for s in samples if lacking(s)]
    missing = sorted({s.prompt_id for s in to_fill} - set(by_id))
    if missing:
        raise ValueError(f"samples refer to prompt ids that are not in the prompt list: {missing[:5]}")
    for s in to_fill:
        carry_prompt(s, by_id[s.prompt_id])
    return samples


def score_records(reward, samples, prompts=None) -> list[dict]:
    """One {score, ...} per sample: the reward (None where the source gives none) and what else the source keeps
    per sample (a binary label, per-instruction results, a reward function's log_extra columns). A source that
    reads whole samples (`takes_samples`: a Python function, which may read the prompt row's columns and the token
    ids; the instruction checks) gets them, filled in from `prompts` where written before they carried their
    prompt; the others get prompts and completions (score_samples)."""
    if not getattr(reward, "takes_samples", False):
        return [{"score": s} for s in score_samples(reward, samples, prompts)]
    if prompts is not None:
        samples = with_prompt_text(samples, prompts)
    else:
        _require_prompt_text(samples)
    return reward.score_samples(samples)


def _require_prompt_text(samples) -> None:
    if any(s.prompt is None for s in samples):
        raise UserError(
            "these samples carry no prompt text (written by an older version): score them with "
            "the prompts file, or sample them again"
        )


def score_samples(reward, samples, prompts=None) -> list[float | None]:
    """One reward per sample. Reward sources see the prompt's text: the sample's own (`Sample.prompt`) or, for
    samples written before they carried it, the text of `prompts` (cringe.data.Prompt) with the same prompt id.
    A reward source that renders conversations (`takes_messages`) gets a conversational prompt's messages; one
    that reads whole samples (`takes_samples`) gets them (score_records)."""
    if getattr(reward, "takes_samples", False):
        return [r["score"] for r in score_records(reward, samples, prompts)]
    chat = getattr(reward, "takes_messages", False)
    if prompts is not None:
        text = {p.prompt_id: (p.messages or p.text) if chat else p.text for p in prompts}
        missing = sorted({s.prompt_id for s in samples} - set(text))
        if missing:
            raise ValueError(f"samples refer to prompt ids that are not in the prompt list: {missing[:5]}")
        prompt_texts = [text[s.prompt_id] for s in samples]
    else:
        _require_prompt_text(samples)
        prompt_texts = [(s.prompt_messages or s.prompt) if chat else s.prompt for s in samples]
    return reward.score(prompt_texts, [s.completion for s in samples])


def completion_logprobs(model, samples, pad_token_id: int, batch_size: int = 32) -> list[float]:
    """log pi(completion | prompt) of each sample under `model`."""

    rows = [{"prompt_ids": s.prompt_ids, "completion_ids": [s.completion_ids]} for s in samples]
    return sequence_logprobs(model, rows, pad_token_id, batch_size=batch_size)


def per_sample(values: Sequence[float | None], samples, details: Sequence[dict] | None = None) -> list[dict]:
    """Rows for scores.jsonl: {prompt_id, sample_id, score} (score null: no reward), and each sample's details
    when given (a `label`, per-instruction results, ...)."""
    details = details or [{}] * len(samples)
    return [
        {"prompt_id": s.prompt_id, "sample_id": s.sample_id, "score": r, **d}
        for s, r, d in zip(samples, values, details)
    ]
