"""Evaluation people can trust: win rates with intervals, reward, KL to the reference, length, repetition.

`win_rate(policy_scores, baseline_scores)` follows AlpacaEval's convention per prompt (win 1, tie 0.5, loss 0)
and reports the standard error of the mean and a bootstrap 95% interval. The other metrics make reward gains
bought with degenerate text visible: a Monte-Carlo KL(pi || pi_ref) from the policy's own samples, completion
length, distinct-n across completions and the share of repeated n-grams within them.

`compare` assembles all of it for a policy against a baseline, in the one schema that `cringe evaluate`, the
loop's eval.json, the demo's results and the benchmarks share (see its docstring).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from cringe import chunked as C
from cringe.data import Collator
from cringe.denormals import flush_denormals
from cringe.errors import UserError
from cringe.losses import sequence_logps


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _bootstrap_ci(values: Sequence[float], seed: int, n_boot: int = 10_000, level: float = 0.95):
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return _percentile_interval(means, level)


def _percentile_interval(sorted_means: Sequence[float], level: float) -> tuple[float, float]:
    """The bootstrap's percentile interval from its sorted resampled means."""
    n_boot = len(sorted_means)
    return sorted_means[int((1 - level) / 2 * n_boot)], sorted_means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]


def win_rate_from_outcomes(outcomes: Sequence[float], *, seed: int = 0, n_boot: int = 10_000) -> dict:
    """outcomes per prompt in [0, 1] (1 win, 0.5 tie, 0 loss) -> {win_rate, sem, ci_low, ci_high, n}."""
    outcomes = [float(o) for o in outcomes]
    if not outcomes:
        raise ValueError("no outcomes to compute a win rate from")
    mean, sem = _mean_sem(outcomes)
    lo, hi = _bootstrap_ci(outcomes, seed, n_boot)
    return {"win_rate": mean, "sem": sem, "ci_low": lo, "ci_high": hi, "n": len(outcomes)}


def _outcome(policy: float, baseline: float) -> float:
    return 1.0 if policy > baseline else 0.5 if policy == baseline else 0.0


def win_rate(
    policy_scores: Sequence[float], baseline_scores: Sequence[float], *, seed: int = 0, n_boot: int = 10_000
) -> dict:
    """Per prompt, policy vs baseline score: win 1, tie 0.5, loss 0. Returns {win_rate, sem, ci_low, ci_high, n}."""
    if len(policy_scores) != len(baseline_scores):
        raise ValueError(f"{len(policy_scores)} policy scores but {len(baseline_scores)} baseline scores")
    outcomes = [_outcome(p, b) for p, b in zip(policy_scores, baseline_scores)]
    return win_rate_from_outcomes(outcomes, seed=seed, n_boot=n_boot)


def mean_by_prompt(samples, scores: Sequence[float]) -> dict[int, float]:
    """Mean score of each prompt's samples (objects with a `prompt_id`): the per-prompt value a win rate compares."""
    totals: dict[int, list[float]] = {}
    for s, r in zip(samples, scores):
        totals.setdefault(s.prompt_id, []).append(r)
    return {k: sum(v) / len(v) for k, v in totals.items()}


def win_outcomes(
    policy_samples, policy_scores: Sequence[float], baseline_samples, baseline_scores: Sequence[float]
) -> list[float]:
    """Per held-out prompt (sorted by prompt id): 1 if the policy's mean score beats the baseline's, 0.5 on a tie,
    0 otherwise. Several samples per prompt are averaged first. Raises if the two sides cover different prompts."""
    if len(policy_samples) != len(policy_scores) or len(baseline_samples) != len(baseline_scores):
        raise ValueError("compare: one score per sample is needed on both sides")
    per_prompt = mean_by_prompt(policy_samples, policy_scores)
    base_per_prompt = mean_by_prompt(baseline_samples, baseline_scores)
    if set(per_prompt) != set(base_per_prompt):
        missing = sorted(set(per_prompt) ^ set(base_per_prompt))[:5]
        raise ValueError(f"compare: policy and baseline were sampled on different prompts (e.g. prompt ids {missing})")
    return [_outcome(per_prompt[i], base_per_prompt[i]) for i in sorted(per_prompt)]


def pooled_mean(groups: Sequence[Sequence[float]], *, seed: int = 0, n_boot: int = 10_000, level: float = 0.95) -> dict:
    """The mean of per-prompt values from several independent runs (seeds), with an interval that accounts for
    both sources of variation: a two-stage bootstrap that resamples runs, then prompts within each drawn run.

    groups: one list of per-prompt values per run (e.g. win outcomes, or gold rewards). Every run weighs the same.
    Returns {mean, ci_low, ci_high, per_run: [mean of each run], n_runs, n (values in all)}. With one run it is
    the ordinary prompt bootstrap; with few runs the interval is honest but coarse (it can only move as far as
    the runs themselves disagree)."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("pooled_mean needs at least one run, each with at least one value")
    rng = random.Random(seed)
    per_run = [sum(g) / len(g) for g in groups]
    means = []
    for _ in range(n_boot):
        total = 0.0
        for _ in range(len(groups)):
            g = groups[rng.randrange(len(groups))]
            n = len(g)
            total += sum(g[rng.randrange(n)] for _ in range(n)) / n
        means.append(total / len(groups))
    lo, hi = _percentile_interval(sorted(means), level)
    return {
        "mean": sum(per_run) / len(per_run),
        "ci_low": lo,
        "ci_high": hi,
        "per_run": per_run,
        "n_runs": len(groups),
        "n": sum(len(g) for g in groups),
    }


def mean_with_ci(values: Sequence[float], *, seed: int = 0) -> dict:
    mean, sem = _mean_sem(values)
    lo, hi = _bootstrap_ci(values, seed, 2_000)
    return {"mean": mean, "sem": sem, "ci_low": lo, "ci_high": hi, "n": len(values)}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams, across all completions (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(texts: Sequence[str], n: int = 3) -> float:
    """Mean over completions of the share of word n-grams that repeat an earlier n-gram of the same completion."""
    rates = []
    for t in texts:
        words = t.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


@torch.no_grad()
def sequence_logprobs(model, rows: Sequence[dict], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """log pi(completion | prompt) for rows {prompt_ids, completion_ids: [ids]} (the first completion).

    Where `cringe.chunked` can read the model, only the completion positions reach the LM head, a chunk of
    tokens at a time: the [B, T, V] logits (and their log-softmax) of the plain forward are never formed. On
    2 CPU cores that made this pass, two of which every evaluation runs, faster (bench/results/kl_pass-*.md).
    """

    flush_denormals()
    collate = Collator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    lm = C.causal_lm(model)
    fused = C.chunked_unsupported_reason(model) is None
    head = lm.get_output_embeddings() if fused else None

    out: list[float] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="log-probs", unit="batch", disable=len(rows) <= batch_size):
        chunk = [
            {"prompt_ids": r["prompt_ids"], "completion_ids": r["completion_ids"][:1]}
            for r in rows[start : start + batch_size]
        ]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        if fused:
            hidden, targets, mask = C.completion_hidden(
                model, lm.get_decoder(), batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]
            )
            total, _ = C.sequence_logps(hidden, head.weight, head.bias, targets, C.row_of_position(mask), len(chunk))
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            total, _ = sequence_logps(logits[:, :-1], batch["labels"][:, 1:])
        out += total.tolist()
    if was_training:
        model.train()
    return out


def kl_estimate(policy_logps: Sequence[float], ref_logps: Sequence[float], *, seed: int = 0) -> dict:
    """Monte-Carlo KL(pi || pi_ref) = E_{y~pi}[log pi(y) - log pi_ref(y)] from the policy's own samples."""
    return mean_with_ci([p - r for p, r in zip(policy_logps, ref_logps)], seed=seed)


def text_metrics(texts: Sequence[str], num_tokens: Sequence[int], finish_reasons: Sequence[str]) -> dict:
    return {
        "length_tokens": sum(num_tokens) / max(1, len(num_tokens)),
        "truncated_rate": sum(r == "length" for r in finish_reasons) / max(1, len(finish_reasons)),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "repeated_3gram_rate": repeated_ngram_rate(texts, 3),
    }


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table: columns are (header, key); numbers get 3 decimals."""

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for _, k in columns) + " |" for r in rows]
    return "\n".join(lines)


def summarise(samples, scores: Sequence[float], *, seed: int = 0) -> dict:
    """One side of a comparison: {reward: mean_with_ci, text: text_metrics}."""
    return {
        "reward": mean_with_ci(scores, seed=seed),
        "text": text_metrics(
            [s.completion for s in samples], [s.num_tokens for s in samples], [s.finish_reason for s in samples]
        ),
    }


def compare(
    policy_samples,
    policy_scores: Sequence[float],
    baseline_samples,
    baseline_scores: Sequence[float],
    *,
    policy_logps: Sequence[float] | None = None,
    reference_logps: Sequence[float] | None = None,
    seed: int = 0,
) -> dict:
    """A policy against a baseline on the same held-out prompts: the one comparison schema.

    samples: objects with prompt_id, completion, num_tokens, finish_reason (cringe.generation.Sample); scores: one
    reward per sample. Several samples per prompt are averaged per prompt before the win rate. policy_logps and
    reference_logps: log pi(y) and log pi_ref(y) of the policy's own samples, for the Monte-Carlo KL (None: no KL).
    Every interval is seeded with `seed`, so the same inputs give the same numbers.

    Returns {n_prompts, win_rate: {win_rate, sem, ci_low, ci_high, n}, reward: {mean, sem, ci_low, ci_high, n},
    baseline_reward: {...}, kl: {mean, sem, ci_low, ci_high, n} | None, text: {length_tokens, truncated_rate,
    distinct_1, distinct_2, repeated_3gram_rate}, baseline_text: {...}}.
    """
    for side, scores in (("policy", policy_scores), ("baseline", baseline_scores)):
        missing = sum(r is None for r in scores)
        if missing:
            raise UserError(
                f"evaluation: {missing} of {len(scores)} {side} samples got no reward (None); a comparison needs a "
                "reward for every sample: set eval_reward to a source that scores them all"
            )
    outcomes = win_outcomes(policy_samples, policy_scores, baseline_samples, baseline_scores)
    policy, baseline = (
        summarise(policy_samples, policy_scores, seed=seed),
        summarise(baseline_samples, baseline_scores, seed=seed),
    )
    kl = None
    if policy_logps is not None:
        if reference_logps is None or not len(policy_logps) == len(reference_logps) == len(policy_samples):
            raise ValueError("compare: KL needs one policy and one reference log-prob per policy sample")
        kl = kl_estimate(policy_logps, reference_logps, seed=seed)
    return {
        "n_prompts": len(outcomes),
        "win_rate": win_rate_from_outcomes(outcomes, seed=seed),
        "reward": policy["reward"],
        "baseline_reward": baseline["reward"],
        "kl": kl,
        "text": policy["text"],
        "baseline_text": baseline["text"],
    }


def comparison_rows(comparisons: list[dict], label_key: str) -> list[dict]:
    """Flat table rows from `compare` results (each tagged with `label_key`, e.g. 'round' or 'model')."""
    rows = []
    for c in comparisons:
        w, kl = c["win_rate"], c["kl"]
        rows.append(
            {
                "label": c[label_key],
                "win": w["win_rate"],
                "ci": f"{w['ci_low']:.3f}..{w['ci_high']:.3f}",
                "reward": c["reward"]["mean"],
                "baseline": c["baseline_reward"]["mean"],
                "kl": kl["mean"] if kl else "",
                "len": c["text"]["length_tokens"],
                "d2": c["text"]["distinct_2"],
                "rep": c["text"]["repeated_3gram_rate"],
            }
        )
    return rows


def comparison_table(comparisons: list[dict], label_key: str, label_header: str, baseline: str = "baseline") -> str:
    """A markdown table of `compare` results, one row each."""
    return format_table(
        comparison_rows(comparisons, label_key),
        [
            (label_header, "label"),
            (f"win rate vs {baseline}", "win"),
            ("95% CI", "ci"),
            ("reward", "reward"),
            (f"{baseline} reward", "baseline"),
            (f"KL(pi||{baseline})", "kl"),
            ("length", "len"),
            ("distinct-2", "d2"),
            ("repeated 3-grams", "rep"),
        ],
    )
