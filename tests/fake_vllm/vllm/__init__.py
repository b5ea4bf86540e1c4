"""A stand-in for vLLM's offline API, for contract tests on machines without a GPU or vLLM.

It implements the surface cringe uses (LLM(model=..., **engine options), LLM.generate(prompts, sampling_params,
use_tqdm=...), SamplingParams, TokensPrompt) and records every call as a JSON line in $FAKE_VLLM_LOG, so a test
(even one whose vLLM runs in a subprocess) can check what cringe asked for. Completions are drawn from a seeded
generator: the j-th completion of a request with seed s uses s + j, as vLLM does, so seed bugs show as repeats.
"""

import json
import os
import random

__version__ = "0.0.0-fake"


def _record(event: dict) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


class SamplingParams:
    def __init__(
        self,
        n=1,
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        max_tokens=16,
        seed=None,
        stop_token_ids=None,
        skip_special_tokens=True,
        **extra,
    ):
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.max_tokens, self.seed, self.stop_token_ids = max_tokens, seed, list(stop_token_ids or [])
        self.skip_special_tokens, self.extra = skip_special_tokens, extra

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop_token_ids": self.stop_token_ids,
        }


def TokensPrompt(prompt_token_ids):  # a TypedDict in vLLM: a plain dict at run time
    return {"prompt_token_ids": list(prompt_token_ids)}


class CompletionOutput:
    def __init__(self, index, token_ids, finish_reason):
        self.index, self.token_ids, self.finish_reason = index, token_ids, finish_reason
        self.text = ""


class RequestOutput:
    def __init__(self, request_id, prompt_token_ids, outputs):
        self.request_id, self.prompt_token_ids, self.outputs = request_id, prompt_token_ids, outputs


class LLM:
    VOCAB = 256  # ids drawn from the tiny test model's byte range

    def __init__(self, model, **options):
        if not os.path.isdir(model) and "/" not in model:
            raise ValueError(f"fake vllm: {model!r} is neither a folder nor a hub id")
        if os.environ.get("FAKE_VLLM_START_FAILS"):  # as vLLM reports any failure of its engine process
            raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
        self.model = model
        _record({"event": "LLM", "model": model, "options": options, "pid": os.getpid()})

    def generate(self, prompts, sampling_params=None, use_tqdm=True, **kwargs):
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("fake vllm: one SamplingParams per prompt, or one for all")
        _record(
            {
                "event": "generate",
                "pid": os.getpid(),
                "prompts": [p["prompt_token_ids"] for p in prompts],
                "params": [p.as_dict() for p in params],
            }
        )
        outputs = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            completions = []
            for j in range(p.n):
                rng = random.Random(p.seed + j if p.seed is not None else None)
                ids = [rng.randrange(self.VOCAB) for _ in range(p.max_tokens)]
                stop = rng.random() < 0.5 and p.stop_token_ids
                if stop:
                    cut = rng.randrange(1, p.max_tokens + 1)
                    ids = ids[: cut - 1] + [p.stop_token_ids[0]]
                completions.append(CompletionOutput(j, ids, "stop" if stop else "length"))
            outputs.append(RequestOutput(str(i), prompt["prompt_token_ids"], completions))
        return outputs
