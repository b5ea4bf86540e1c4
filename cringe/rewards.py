"""Reward sources behind one interface, `score(prompts, completions) -> list[float]`:

  * `RewardModel`: a Hugging Face sequence-classification model (one logit, or two: logit[1] - logit[0]) with
    its own tokenizer: the conversation rendered with its chat template (or raw text), batched, on its device;
  * `CallableReward`: a Python function named as "module:function" (or passed directly);
  * `PairwiseJudge`: an LLM judge over the OpenAI-compatible chat API (vLLM's server, a hosted model). It asks
    each pair in both orders to cancel position bias; `score` turns a prompt's completions into round-robin win
    rates, `compare` judges two lists head to head.

Plus `train_reward_model`: a one-logit reward model from `text,label` rows (binary cross-entropy) or pairwise
rows (Bradley-Terry), trained with transformers' Trainer.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import http.client
import importlib
import inspect
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from cringe.denormals import flush_denormals
from cringe.durable.answerlog import AnswerLog, request_key
from cringe.errors import UserError
from cringe.models import _resolve_dtype, default_dtype, resolve_device

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


# ---------------------------------------------------------------------------------------------------------------
# LLM judge over the OpenAI-compatible chat API
# ---------------------------------------------------------------------------------------------------------------

JUDGE_TEMPLATE = (
    "You compare two responses to the same instruction and say which one is better.\n\n"
    "Instruction:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Answer with exactly one letter: A or B."
)


@dataclass
class JudgeStats:
    answers: int = 0  # answers received (or taken from the answer log), readable or not
    requests: int = 0
    retries: int = 0
    invalid_answers: int = 0
    failed_requests: int = 0
    undecided_pairs: int = 0
    cached: int = 0  # answers taken from the answer log (cringe.durable.answerlog) instead of asked again
    skipped: int = 0  # requests not made because the server had stopped answering
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts):
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "answers",
                "requests",
                "retries",
                "invalid_answers",
                "failed_requests",
                "undecided_pairs",
                "cached",
                "skipped",
            )
        }


class JudgeError(RuntimeError):
    pass


class JudgeUnreadableError(UserError):
    """Most of the judge's answers named neither response: scores built from the rest would be mostly 0.5."""


class JudgeUnavailableError(UserError):
    """Scoring stopped because judge requests failed after their retries (the server is down, refuses, times out):
    scores with missing verdicts are never written."""


class PairwiseJudge:
    """Pairwise preferences from a chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    The API key is read from the environment variable named by `api_key_env` (never from config files, never
    logged). Requests retry with exponential backoff on 429, 5xx and timeouts; at most `concurrency` run at once.
    Verdicts (`verdict`):
    * "text": the reply's first word must be A or B ("A", "B.", "**A**", "Response B" are read; "A: A" is A);
      anything else is counted invalid and that order gives no verdict: it is never coerced into one.
    * "choice": the same, with the answer constrained to A or B by the server (vLLM's structured outputs,
      `structured_outputs: {choice: [A, B]}`; a server without them ignores or refuses the field).
    * "logprobs": AlpacaEval's way: the first token's top log-probabilities, P(A) / (P(A) + P(B)), a continuous
      preference that a small judge gives even when its text would say something else. Needs `logprobs`.
    A pair's result is the mean over the orders that gave a verdict (1 = first better, 0 = second better,
    between: split or uncertain), or None when neither did. When more than `max_invalid` of the answers are
    unreadable, `score` refuses (JudgeUnreadableError, with examples) instead of returning mostly 0.5.

    Failures. Once a request finds the server gone (connection refused or dropped, after its retries), the
    requests still queued are not made. `score` works in chunks and raises JudgeUnavailableError after a chunk
    with any failed request, instead of scoring with verdicts missing. Inside `keep_answers(path)` every answer
    is appended to an answer log as it arrives and looked up there first, so a rerun asks only for the missing
    ones (the loop keeps them beside the step's output: cringe.durable.answerlog).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        template: str = JUDGE_TEMPLATE,
        max_tokens: int = 4,
        verdict: str = "text",
        max_invalid: float = 0.5,
    ):
        if verdict not in VERDICTS:
            raise UserError(f"judge verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
        if not 0 <= max_invalid <= 1:
            raise UserError("judge max_invalid is a share of the answers, between 0 and 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.timeout, self.max_retries, self.backoff = concurrency, timeout, max_retries, backoff
        self.template, self.max_tokens, self.verdict, self.max_invalid = template, max_tokens, verdict, max_invalid
        self.stats = JudgeStats()
        self.unreadable: list[str] = []  # a few examples for the report
        self.answers = None  # a cringe.durable.answerlog.AnswerLog inside keep_answers()
        self._server_gone = threading.Event()
        self._last_failure = ""

    @contextlib.contextmanager
    def keep_answers(self, path):
        """Inside: answers are looked up in, and appended to, the answer log at `path` (cringe.durable.answerlog)."""

        self.answers = AnswerLog(path)
        try:
            yield self.answers
        finally:
            self.answers.close()
            self.answers = None

    def _request_body(self, prompt: str, a: str, b: str) -> str:
        request = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": self.template.format(prompt=prompt, a=a, b=b)}],
        }
        if self.verdict == "choice":
            request["structured_outputs"] = {"choice": ["A", "B"]}
        elif self.verdict == "logprobs":
            request.update(max_tokens=1, logprobs=True, top_logprobs=20)
        return json.dumps(request)

    def _answer_of(self, response: dict) -> str:
        """The text the answer log keeps: the reply, or with `logprobs` the first token's alternatives as JSON."""
        choice = response["choices"][0]
        if self.verdict != "logprobs":
            return choice["message"]["content"]
        first = choice["logprobs"]["content"][0]
        return json.dumps({t["token"]: t["logprob"] for t in first["top_logprobs"]})

    def _ask(self, prompt: str, a: str, b: str) -> str | None:
        body = self._request_body(prompt, a, b)
        log = self.answers
        if log is not None:
            log_key = request_key(body)
            if log.get(log_key) is not None:
                self.stats.add(cached=1)
                return log.get(log_key)
        if self._server_gone.is_set():
            self.stats.add(skipped=1)
            return None
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.max_retries + 1):
            self.stats.add(requests=1)
            gone = False  # set when the server refused or dropped the connection
            try:
                request = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = self._answer_of(json.loads(response.read()))
            except urllib.error.HTTPError as err:
                retryable = err.code == 429 or err.code >= 500
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
                # HTTPException: a response cut short (a server dying mid-reply) is worth another try too.
                retryable, reason = True, _failure_reason(err)
                gone = isinstance(err, ConnectionError) or isinstance(getattr(err, "reason", None), ConnectionError)
            except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                self.stats.add(invalid_answers=1)
                return None
            else:
                if log is not None and isinstance(answer, str):
                    log.add(log_key, answer)
                return answer
            if not retryable or attempt == self.max_retries:
                self.stats.add(failed_requests=1)
                self._last_failure = reason
                logger.warning("judge request failed after %d attempts (%s)", attempt + 1, reason)
                if retryable and gone:
                    self._server_gone.set()  # a server that refuses connections: stop asking it
                return None
            self.stats.add(retries=1)
            time.sleep(self.backoff * 2**attempt * (1 + 0.1 * random.random()))
        return None

    def _verdict(self, answer: str | None) -> float | None:
        """P(response A is better) from one answer: 1 or 0 from text, continuous from log-probabilities; None
        when the answer names neither (counted, and a few kept for the report)."""
        if answer is None:
            return None
        self.stats.add(answers=1)
        value = read_logprob_verdict(answer) if self.verdict == "logprobs" else read_text_verdict(answer)
        if value is None:
            self.stats.add(invalid_answers=1)
            with self.stats.lock:
                if len(self.unreadable) < 3:
                    self.unreadable.append(answer[:60])
        return value

    def _pair(self, prompt: str, first: str, second: str) -> float | None:
        results = []
        v = self._verdict(self._ask(prompt, first, second))  # first shown as A
        if v is not None:
            results.append(v)
        v = self._verdict(self._ask(prompt, second, first))  # first shown as B
        if v is not None:
            results.append(1.0 - v)
        if not results:
            self.stats.add(undecided_pairs=1)
            return None
        return sum(results) / len(results)

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float | None]:
        """Per prompt: 1 first better, 0 second better, 0.5 split across orders, None no valid verdict."""
        self._server_gone.clear()
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            return list(pool.map(self._pair, prompts, first, second))
        finally:
            # On an interrupt (SIGTERM, Ctrl-C) drop the queued comparisons instead of asking all of them first.
            pool.shutdown(wait=True, cancel_futures=True)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Round-robin within each prompt's completions: a completion's score is its mean result against the
        others of the same prompt. Undecided comparisons are left out of the mean."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        jobs = [(p, i, j) for p, idx in groups.items() for a, i in enumerate(idx) for j in idx[a + 1 :]]
        results: list[float | None] = []
        chunk = 4 * self.concurrency  # a failing server stops the scoring after one chunk, not after every job
        failed_before = self.stats.failed_requests
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            results += self.compare(
                [p for p, _, _ in part], [completions[i] for _, i, _ in part], [completions[j] for _, _, j in part]
            )
            if self.stats.failed_requests > failed_before:
                raise JudgeUnavailableError(self._failure_message(self.stats.failed_requests - failed_before))
        self.check_readable()
        wins = [0.0] * len(completions)
        games = [0] * len(completions)
        for (_, i, j), r in zip(jobs, results):
            if r is None:
                continue
            wins[i] += r
            wins[j] += 1 - r
            games[i] += 1
            games[j] += 1
        return [w / g if g else 0.5 for w, g in zip(wins, games)]

    def check_readable(self) -> None:
        """Log what the judge answered; refuse when most answers named neither response."""
        s = self.stats
        logger.info(
            "judge %s (verdict: %s): %d answers, %d unreadable, %d pairs undecided, %d from the answer log",
            self.model,
            self.verdict,
            s.answers,
            s.invalid_answers,
            s.undecided_pairs,
            s.cached,
        )
        if s.answers and s.invalid_answers > self.max_invalid * s.answers:
            hint = (
                "verdict: choice (the server constrains the answer to A or B) or verdict: logprobs"
                if self.verdict == "text"
                else "a stronger judge model, or another verdict"
            )
            raise JudgeUnreadableError(
                f"the judge {self.model} at {self.url} named neither response in {s.invalid_answers} of {s.answers} "
                f"answers (more than max_invalid {self.max_invalid:.0%}; e.g. {self.unreadable}); try {hint}"
            )

    def _failure_message(self, failed: int) -> str:
        kept = (
            f"the {len(self.answers.answers)} answers received are kept in {self.answers.path}; rerun the "
            "same command once it answers again: only the missing ones are asked"
            if self.answers is not None
            else "no scores were written"
        )
        return (
            f"the judge at {self.url} failed {failed} request(s) after {self.max_retries + 1} attempts each "
            f"(last: {self._last_failure}); {kept}"
        )


VERDICTS = ("text", "choice", "logprobs")
# The capital letter alone ("a" is more often an article), after optional punctuation or "Response".
_ANSWER = re.compile(r"^[^A-Za-z0-9]*(?:(?i:response)\s+)?([AB])(?![A-Za-z0-9'])")


def read_text_verdict(answer: str) -> float | None:
    """1.0 for A, 0.0 for B, from the reply's first word; None when it names neither."""
    match = _ANSWER.match(answer.strip())
    if match is None:
        return None
    return 1.0 if match.group(1).upper() == "A" else 0.0


def read_logprob_verdict(answer: str) -> float | None:
    """P(A) / (P(A) + P(B)) from a first token's top log-probabilities ({token: logprob} as JSON); tokens that
    read as A or B after stripping spaces and punctuation are pooled. None when neither is among them."""
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in json.loads(answer).items():
        letter = token.strip().strip("*.:()").upper()
        if letter in mass:
            mass[letter] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None


def _failure_reason(err: BaseException) -> str:
    """A short reason for a failed request: the error type, and the socket error inside a URLError."""
    inner = getattr(err, "reason", None)
    return f"{type(err).__name__}: {inner}" if inner is not None else type(err).__name__


REWARD_TYPES = ("callable", "model", "judge")
# A spec's keys are its class's constructor parameters (read once here, so they cannot drift from the code).
_SPEC_KEYS = {
    "model": {"path"}
    | set(inspect.signature(RewardModel.__init__).parameters) - {"self", "model_or_path", "tokenizer"},
    "judge": set(inspect.signature(PairwiseJudge.__init__).parameters) - {"self"},
}


def check_reward_spec(spec, where: str = "reward") -> str:
    """A reward source's mapping checked without loading anything: its type, its required keys, no unknown key
    (the keys are the constructor's parameters, so they cannot drift), the values a mistake would show only when a
    round first scores (a reward model's input, a judge's verdict). A config is checked when it is read (and by a
    recipe's --dry-run). Returns the type."""
    if not isinstance(spec, dict):
        raise UserError(f"{where}: a reward source is a mapping {{type: callable|model|judge, ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in REWARD_TYPES:
        raise UserError(f"{where}: type must be callable, model or judge, got {kind!r}")
    keys = set(spec) - {"type"}
    if kind == "callable":
        required, known = {"function"}, {"function", "kwargs"}
    elif kind == "model":
        required, known = {"path"}, _SPEC_KEYS["model"]
    else:
        required, known = {"base_url", "model"}, _SPEC_KEYS["judge"]
    missing = sorted(required - keys)
    if missing:
        hints = {
            "path": "the reward model's folder or hub id",
            "base_url": "the server's /v1 URL",
            "model": "the served model's name",
            "function": "'module:function'",
        }
        raise UserError(f"{where} ({kind}): missing {', '.join(f'{k} ({hints[k]})' for k in missing)}")
    unknown = sorted(keys - known)
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(k, known, n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UserError(f"{where} ({kind}): unknown keys {unknown}{hint}; known: {', '.join(sorted(known))}")
    if kind == "model" and spec.get("input", "auto") not in REWARD_INPUTS:
        raise UserError(f"{where}: input must be one of {', '.join(REWARD_INPUTS)}; got {spec['input']!r}")
    if kind == "judge" and spec.get("verdict", "text") not in VERDICTS:
        raise UserError(f"{where}: verdict must be one of {', '.join(VERDICTS)}; got {spec['verdict']!r}")
    return kind


def load_reward_source(spec: dict, device: str | None = None):
    """From a config mapping: {type: callable, function: "mod:fn", kwargs: {...}}
    | {type: model, path: ..., input: auto|conversation|completion|prompt+completion, system, max_length, ...}
    | {type: judge, base_url: ..., model: ..., api_key_env: ...}. device: where a reward model runs unless its spec
    says (auto: cuda when available); on a GPU it loads in bfloat16 unless its spec gives a dtype."""
    check_reward_spec(spec)
    spec = dict(spec)
    kind = spec.pop("type")
    if kind == "callable":
        reward = CallableReward(spec["function"])
        if spec.get("kwargs"):
            reward.fn = functools.partial(reward.fn, **spec["kwargs"])
        return reward
    if kind == "model":
        spec["device"] = resolve_device(spec.get("device") or device or "auto")
        spec["dtype"] = default_dtype(spec.get("dtype"), spec["device"])
        return RewardModel(spec.pop("path"), **spec)
    return PairwiseJudge(spec.pop("base_url"), spec.pop("model"), **spec)


# ---------------------------------------------------------------------------------------------------------------
# Reward-model training
# ---------------------------------------------------------------------------------------------------------------


def train_reward_model(
    rows: Sequence[dict],
    base_model: str,
    output_dir: str,
    *,
    epochs: float = 1.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    max_length: int = 256,
    seed: int = 0,
    truncation_side: str = "right",
    trust_remote_code: bool = False,
    **training_kwargs,
) -> str:
    """Fine-tune a one-logit sequence classifier as a reward model and save it to `output_dir`.

    rows: {"text", "label": bool} (binary cross-entropy on the logit) or {"chosen", "rejected"} texts
    (Bradley-Terry: -log sigmoid(r_chosen - r_rejected)). truncation_side 'left' keeps the end of long texts
    (where reviews state their verdict); it is saved with the tokenizer, so scoring truncates the same way.
    Returns output_dir.
    """

    if not rows:
        raise UserError("no rows to train the reward model on")
    pairwise = "chosen" in rows[0]
    for i, row in enumerate(rows):
        fields = ("chosen", "rejected") if pairwise else ("text", "label")
        for f in fields:
            if f not in row:
                raise UserError(f"row {i}, field '{f}': missing")
        if not pairwise and not isinstance(row["label"], bool):
            raise UserError(f"row {i}, field 'label': expected a boolean, got {row['label']!r}")
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    tokenizer.truncation_side = truncation_side
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    def collate(batch):
        if pairwise:
            texts = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
            enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            return dict(enc)
        enc = tokenizer(
            [r["text"] for r in batch], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        return {**enc, "labels": torch.tensor([float(r["label"]) for r in batch])}

    class RewardTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels", None)
            rewards = model(**inputs).logits[:, 0].float()
            if pairwise:
                half = rewards.shape[0] // 2
                loss = -torch.nn.functional.logsigmoid(rewards[:half] - rewards[half:]).mean()
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(rewards, labels.float())
            return (loss, {"rewards": rewards}) if return_outputs else loss

    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        remove_unused_columns=False,
        seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=20,
        **training_kwargs,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=list(rows), data_collator=collate)
    trainer.train()
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
