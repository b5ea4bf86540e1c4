"""Evaluation people can trust: win rates with intervals, reward, KL to the reference, length, repetition.

`win_rate(policy_scores, baseline_scores)` follows AlpacaEval's convention per prompt (win 1, tie 0.5, loss 0)
and reports the standard error of the mean and a bootstrap 95% interval. The other metrics make reward gains
bought with degenerate text visible: a Monte-Carlo KL(pi || pi_ref) from the policy's own samples, completion
length, distinct-n across completions and the share of repeated n-grams within them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch


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
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return lo, hi


def win_rate_from_outcomes(outcomes: Sequence[float], *, seed: int = 0, n_boot: int = 10_000) -> dict:
    """outcomes per prompt in [0, 1] (1 win, 0.5 tie, 0 loss) -> {win_rate, sem, ci_low, ci_high, n}."""
    outcomes = [float(o) for o in outcomes]
    if not outcomes:
        raise ValueError("no outcomes to compute a win rate from")
    mean, sem = _mean_sem(outcomes)
    lo, hi = _bootstrap_ci(outcomes, seed, n_boot)
    return {"win_rate": mean, "sem": sem, "ci_low": lo, "ci_high": hi, "n": len(outcomes)}


def win_rate(policy_scores: Sequence[float], baseline_scores: Sequence[float], *, seed: int = 0,
             n_boot: int = 10_000) -> dict:
    """Per prompt, policy vs baseline score: win 1, tie 0.5, loss 0. Returns {win_rate, sem, ci_low, ci_high, n}."""
    if len(policy_scores) != len(baseline_scores):
        raise ValueError(f"{len(policy_scores)} policy scores but {len(baseline_scores)} baseline scores")
    outcomes = [1.0 if p > b else 0.5 if p == b else 0.0 for p, b in zip(policy_scores, baseline_scores)]
    return win_rate_from_outcomes(outcomes, seed=seed, n_boot=n_boot)


def mean_by_prompt(samples, scores: Sequence[float]) -> dict[int, float]:
    """Mean score of each prompt's samples (objects with a `prompt_id`): the per-prompt value a win rate compares."""
    totals: dict[int, list[float]] = {}
    for s, r in zip(samples, scores):
        totals.setdefault(s.prompt_id, []).append(r)
    return {k: sum(v) / len(v) for k, v in totals.items()}


def mean_with_ci(values: Sequence[float], *, seed: int = 0) -> dict:
    mean, sem = _mean_sem(values)
    lo, hi = _bootstrap_ci(values, seed, 2_000)
    return {"mean": mean, "sem": sem, "ci_low": lo, "ci_high": hi, "n": len(values)}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams, across all completions (0 when there are none)."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(texts: Sequence[str], n: int = 3) -> float:
    """Mean over completions of the share of word n-grams that repeat an earlier n-gram of the same completion."""
    rates = []
    for t in texts:
        words = t.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


@torch.no_grad()
def sequence_logprobs(model, rows: Sequence[dict], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """log pi(completion | prompt) for rows {prompt_ids, completion_ids: [ids]} (the first completion)."""
    from .data import Collator
    from .losses import sequence_logps

    collate = Collator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = [{"prompt_ids": r["prompt_ids"], "completion_ids": r["completion_ids"][:1]} for r in rows[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
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
