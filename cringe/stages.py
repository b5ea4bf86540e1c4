"""The loop's units of work as plain functions: sample completions, score them, log-probs for KL, and a policy
evaluated against a baseline. `cringe iterate` chains them round after round; `cringe evaluate` uses them alone.

Each takes what it needs explicitly (models, prompts, a reward source) and returns plain data; files and resume
are the caller's business (cringe.loop).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def score_samples(reward, prompts, samples) -> list[float]:
    """One reward per sample. prompts: cringe.data.Prompt (their `text` is what reward sources see)."""
    text = {p.prompt_id: p.text for p in prompts}
    missing = sorted({s.prompt_id for s in samples} - set(text))
    if missing:
        raise ValueError(f"samples refer to prompt ids that are not in the prompt list: {missing[:5]}")
    return reward.score([text[s.prompt_id] for s in samples], [s.completion for s in samples])


def completion_logprobs(model, samples, pad_token_id: int, batch_size: int = 32) -> list[float]:
    """log pi(completion | prompt) of each sample under `model`."""
    from .evaluate import sequence_logprobs

    rows = [{"prompt_ids": s.prompt_ids, "completion_ids": [s.completion_ids]} for s in samples]
    return sequence_logprobs(model, rows, pad_token_id, batch_size=batch_size)


def evaluate_policy(policy: str, baseline: str, prompts_source, reward_spec: dict, *, samples: int = 1,
                    max_new_tokens: int = 48, max_prompts: int | None = None, dtype: str = "float32",
                    seed: int = 0, trust_remote_code: bool = False) -> dict:
    """Sample `samples` completions per held-out prompt from a policy and a baseline (model specs), score both
    with the reward source, and compare them (cringe.evaluate.compare; KL(policy || baseline) on the policy's
    samples). The tokenizer is the baseline's; both models must share it."""
    from .data import load_prompts
    from .evaluate import compare
    from .generation import SamplingConfig, TransformersSampler
    from .models import load_model, load_tokenizer
    from .rewards import load_reward_source

    reward = load_reward_source(reward_spec)
    tokenizer = load_tokenizer(baseline, trust_remote_code)
    prompts = load_prompts(prompts_source, tokenizer, limit=max_prompts)
    sampling = SamplingConfig(n=samples, max_new_tokens=max_new_tokens, seed=seed)
    sides = {}
    for name, spec in (("policy", policy), ("baseline", baseline)):
        model = load_model(spec, tokenizer, dtype, trust_remote_code)
        drawn = TransformersSampler(model, tokenizer).sample([p.ids for p in prompts], sampling)
        sides[name] = (model, drawn, score_samples(reward, prompts, drawn))
    (policy_model, policy_samples, policy_scores), (baseline_model, baseline_samples, baseline_scores) = (
        sides["policy"], sides["baseline"])
    pad = tokenizer.pad_token_id
    return compare(policy_samples, policy_scores, baseline_samples, baseline_scores,
                   policy_logps=completion_logprobs(policy_model, policy_samples, pad),
                   reference_logps=completion_logprobs(baseline_model, policy_samples, pad), seed=seed)


def per_sample(values: Sequence[float], samples) -> list[dict]:
    """Rows for scores.jsonl: {prompt_id, sample_id, score}."""
    return [{"prompt_id": s.prompt_id, "sample_id": s.sample_id, "score": r} for s, r in zip(samples, values)]
