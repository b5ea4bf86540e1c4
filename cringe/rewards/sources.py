"""Reward sources behind one interface, `score(prompts, completions) -> list[float]`, and the one place a config's
reward mapping becomes one (`SOURCE_TYPES`: each type's keys and builder):

  * `RewardModel`: a Hugging Face sequence-classification model (one logit, or two: logit[1] - logit[0]) with
    its own tokenizer: the conversation rendered with its chat template (or raw text), batched, on its device;
  * `CallableReward`: a Python function named as "module:function" (or passed directly);
  * `PairwiseJudge` (cringe.rewards.judge): an LLM judge over the OpenAI-compatible chat API.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from cringe.denormals import flush_denormals
from cringe.errors import UserError
from cringe.models import _resolve_dtype, default_dtype, resolve_device
from cringe.rewards.judge import VERDICTS, PairwiseJudge

logger = logging.getLogger(__name__)


def _check_scores(scores, n: int, source: str) -> list[float]:
    scores = [float(s) for s in scores]
    if len(scores) != n:
        raise UserError(f"{source} returned {len(scores)} scores for {n} completions")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise UserError(f"{source} returned non-finite scores at positions {bad[:10]}")
    return scores


class CallableReward:
    """Wraps `fn(prompts, completions) -> list[float]`; `spec` may be "package.module:function"."""

    def __init__(self, spec: str | Callable):
        if isinstance(spec, str):
            module, _, name = spec.partition(":")
            if not module or not name:
                raise UserError(f"reward function must be given as 'module:function', got {spec!r}")
            spec = getattr(importlib.import_module(module), name)
        self.fn, self.name = spec, getattr(spec, "__qualname__", repr(spec))

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return _check_scores(self.fn(list(prompts), list(completions)), len(completions), self.name)


class RewardModel:
    """A sequence-classification reward model, scored the way it was trained.

    input:
      * 'conversation': the prompt (text, or a list of chat messages) and the completion as a conversation
        (`system` first when given), rendered with the reward model's own chat template, with exactly one BOS;
        the way Skywork-Reward-V2, ArmoRM and other current reward models are used;
      * 'completion': the completion text alone (a classifier trained on reviews);
      * 'prompt+completion': the concatenated raw strings;
      * 'auto' (default): 'conversation' when the reward tokenizer has a chat template, else 'prompt+completion'.

    Sequences are padded on the right and pooled at their last real token, so a score does not depend on the
    batch it was computed in. max_length (default: the model's context) cuts the start of a longer input, never
    its end (where an answer's quality shows), and every cut is counted and logged.
    """

    takes_messages = True  # score() accepts chat-message lists as prompts (cringe.loop.stages.score_samples)

    def __init__(
        self,
        model_or_path,
        tokenizer=None,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        input: str = "auto",
        system: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
    ):

        if input not in REWARD_INPUTS:
            raise UserError(f"reward model input must be one of {', '.join(REWARD_INPUTS)}; got {input!r}")
        if isinstance(model_or_path, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_path, trust_remote_code=trust_remote_code)
            model_or_path = AutoModelForSequenceClassification.from_pretrained(
                model_or_path,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                dtype=_resolve_dtype(dtype) or "auto",
            )
        if tokenizer is None:
            raise UserError("pass the reward model's tokenizer")
        flush_denormals()
        self.model, self.tokenizer = model_or_path.eval(), tokenizer
        if device is not None:
            self.model.to(device)
        if input == "auto":
            input = "conversation" if getattr(tokenizer, "chat_template", None) else "prompt+completion"
        if input == "conversation" and not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "reward model input 'conversation' needs a tokenizer with a chat template; this one has "
                "none (use input: prompt+completion or completion)"
            )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise UserError("the reward model's tokenizer has neither a pad nor an eos token")
        # transformers pools a classifier at the last token that is not pad_token_id: without one it refuses
        # batches, and a wrong one pools at the wrong place.
        self.model.config.pad_token_id = self.pad_id
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = max_length or context or 4096
        self.batch_size, self.input, self.system = batch_size, input, system
        self.truncated = 0
        self._adds_bos = _tokenizer_adds_bos(tokenizer)

    def token_ids(self, prompt, completion: str) -> list[int]:
        """The token ids one (prompt, completion) is scored on."""
        tok = self.tokenizer
        if self.input == "completion":
            text, special = completion, True
        elif self.input == "prompt+completion":
            text, special = _prompt_text(prompt) + completion, True
        else:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + _as_messages(prompt)
            messages.append({"role": "assistant", "content": completion})
            text, special = tok.apply_chat_template(messages, tokenize=False), False
        ids = tok(text, add_special_tokens=special)["input_ids"]
        bos = tok.bos_token_id
        if bos is not None and not special:
            # A template that writes its BOS as text and a tokenizer that adds one would give two (Llama 3's);
            # one that writes none where the tokenizer adds one would give none.
            while len(ids) > 1 and ids[0] == bos and ids[1] == bos:
                ids = ids[1:]
            if self._adds_bos and (not ids or ids[0] != bos):
                ids = [bos] + ids
        if len(ids) > self.max_length:
            self.truncated += 1
            head = [ids[0]] if bos is not None and ids[0] == bos else []
            ids = head + ids[len(ids) - self.max_length + len(head) :]
        return ids

    @torch.no_grad()
    def score(self, prompts: Sequence, completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        device = next(self.model.parameters()).device
        truncated_before = self.truncated
        encoded = [self.token_ids(p, c) for p, c in zip(prompts, completions)]
        if self.truncated > truncated_before:
            logger.warning(
                "reward model: %d of %d inputs were longer than max_length %d; their start was cut",
                self.truncated - truncated_before,
                len(encoded),
                self.max_length,
            )
        # Longest first: batches of similar lengths pad less; scores go back to their positions.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out = [0.0] * len(encoded)
        for start in tqdm(
            range(0, len(order), self.batch_size),
            desc="reward model",
            unit="batch",
            disable=len(order) <= self.batch_size,
        ):
            index = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in index)
            ids = torch.full((len(index), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            values = (logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]).tolist()
            for i, v in zip(index, values):
                out[i] = v
        return _check_scores(out, len(encoded), "reward model")


REWARD_INPUTS = ("auto", "conversation", "completion", "prompt+completion")


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and bos in tokenizer("a", add_special_tokens=True)["input_ids"][:1]


def _as_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a text prompt is the user's turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("role") == "user" and isinstance(m.get("content"), str))


# ----- config mappings -> reward sources -----------------------------------------------------------------------


@dataclass(frozen=True)
class SourceType:
    """What a reward mapping of one `type` takes: its required keys (each with a hint for the error), every key it
    knows, a check of its values that needs nothing loaded, and the builder (spec without `type`, device) -> source."""

    required: dict[str, str]
    known: frozenset[str]
    build: Callable[[dict, str | None], object]
    check_values: Callable[[dict, str], None] = lambda spec, where: None


def _parameters(fn, *leave_out: str) -> frozenset[str]:
    """A constructor's keyword parameters: the keys a spec may give, read from the code so they cannot drift."""
    return frozenset(inspect.signature(fn).parameters) - {"self", *leave_out}


def _build_callable(spec: dict, device: str | None) -> CallableReward:
    reward = CallableReward(spec["function"])
    if spec.get("kwargs"):
        reward.fn = functools.partial(reward.fn, **spec["kwargs"])
    return reward


def _build_model(spec: dict, device: str | None) -> RewardModel:
    spec = dict(spec)
    spec["device"] = resolve_device(spec.get("device") or device or "auto")
    spec["dtype"] = default_dtype(spec.get("dtype"), spec["device"])
    return RewardModel(spec.pop("path"), **spec)


def _build_judge(spec: dict, device: str | None) -> PairwiseJudge:
    spec = dict(spec)
    return PairwiseJudge(spec.pop("base_url"), spec.pop("model"), **spec)


def _check_model_values(spec: dict, where: str) -> None:
    if spec.get("input", "auto") not in REWARD_INPUTS:
        raise UserError(f"{where}: input must be one of {', '.join(REWARD_INPUTS)}; got {spec['input']!r}")


def _check_judge_values(spec: dict, where: str) -> None:
    if spec.get("verdict", "text") not in VERDICTS:
        raise UserError(f"{where}: verdict must be one of {', '.join(VERDICTS)}; got {spec['verdict']!r}")


# A new kind of reward source is one entry here: check_reward_spec and load_reward_source read only this.
SOURCE_TYPES: dict[str, SourceType] = {
    "callable": SourceType({"function": "'module:function'"}, frozenset({"function", "kwargs"}), _build_callable),
    "model": SourceType(
        {"path": "the reward model's folder or hub id"},
        frozenset({"path"}) | _parameters(RewardModel.__init__, "model_or_path", "tokenizer"),
        _build_model,
        _check_model_values,
    ),
    "judge": SourceType(
        {"base_url": "the server's /v1 URL", "model": "the served model's name"},
        _parameters(PairwiseJudge.__init__),
        _build_judge,
        _check_judge_values,
    ),
}


def check_reward_spec(spec, where: str = "reward") -> str:
    """A reward source's mapping checked without loading anything: its type, its required keys, no unknown key
    (the keys are the constructor's parameters, so they cannot drift), the values a mistake would show only when a
    round first scores (a reward model's input, a judge's verdict). A config is checked when it is read (and by a
    recipe's --dry-run). Returns the type."""
    types = "|".join(SOURCE_TYPES)
    if not isinstance(spec, dict):
        raise UserError(f"{where}: a reward source is a mapping {{type: {types}, ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in SOURCE_TYPES:
        *others, last = SOURCE_TYPES
        raise UserError(f"{where}: type must be {', '.join(others)} or {last}, got {kind!r}")
    source = SOURCE_TYPES[kind]
    keys = set(spec) - {"type"}
    missing = [k for k in source.required if k not in keys]
    if missing:
        raise UserError(f"{where} ({kind}): missing {', '.join(f'{k} ({source.required[k]})' for k in missing)}")
    unknown = sorted(keys - source.known)
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(k, source.known, n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UserError(f"{where} ({kind}): unknown keys {unknown}{hint}; known: {', '.join(sorted(source.known))}")
    source.check_values(spec, where)
    return kind


def load_reward_source(spec: dict, device: str | None = None):
    """From a config mapping: {type: callable, function: "mod:fn", kwargs: {...}}
    | {type: model, path: ..., input: auto|conversation|completion|prompt+completion, system, max_length, ...}
    | {type: judge, base_url: ..., model: ..., api_key_env: ...}. device: where a reward model runs unless its spec
    says (auto: cuda when available); on a GPU it loads in bfloat16 unless its spec gives a dtype."""
    kind = check_reward_spec(spec)
    return SOURCE_TYPES[kind].build({k: v for k, v in spec.items() if k != "type"}, device)
