"""An LLM judge over the OpenAI-compatible chat API (vLLM's server, a hosted model): `PairwiseJudge` asks each pair
in both orders to cancel position bias; `score` turns a prompt's completions into round-robin win rates, `compare`
judges two lists head to head."""

from __future__ import annotations

import contextlib
import http.client
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cringe.durable.answerlog import AnswerLog, request_key
from cringe.errors import UserError

logger = logging.getLogger(__name__)

JUDGE_TEMPLATE = (
    "You compare two responses to the same instruction and say which one is better.\n\n"
    "Instruction:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Answer with exactly one letter: A or B."
)


@dataclass
class JudgeStats:
    """What a judge answered, counted as it answers. Position consistency, as MT-Bench and AlpacaEval report it:
    of the pairs that named a position in both orders, the share whose two orders prefer the same response; and
    of the answers that named a position, the share naming the first shown (A). An answer names A when it reads
    P(A) > 0.5 (a text or choice verdict "A"; with logprobs, the side of 0.5 its P(A) falls on)."""

    answers: int = 0  # answers received (or taken from the answer log), readable or not
    requests: int = 0
    retries: int = 0
    invalid_answers: int = 0
    failed_requests: int = 0
    undecided_pairs: int = 0
    cached: int = 0  # answers taken from the answer log (cringe.durable.answerlog) instead of asked again
    skipped: int = 0  # requests not made because the server had stopped answering
    named_first: int = 0  # answers naming the response shown first (A)
    named_second: int = 0  # answers naming the response shown second (B)
    both_orders: int = 0  # pairs whose two orders both named a position
    consistent_pairs: int = 0  # of those, pairs whose two orders prefer the same response
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    COUNTS = (
        "answers",
        "requests",
        "retries",
        "invalid_answers",
        "failed_requests",
        "undecided_pairs",
        "cached",
        "skipped",
        "named_first",
        "named_second",
        "both_orders",
        "consistent_pairs",
    )

    def add(self, **counts):
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def add_pair(self, shown_first: float | None, shown_second: float | None) -> None:
        """Count the positions one pair's two answers named: each is P(the response shown as A is better), None
        when unreadable; the pair's responses are swapped between the two."""
        named = [None if v is None or v == 0.5 else v > 0.5 for v in (shown_first, shown_second)]
        with self.lock:
            self.named_first += named.count(True)
            self.named_second += named.count(False)
            if None not in named:
                self.both_orders += 1
                self.consistent_pairs += named[0] != named[1]  # A, then B: the same response both times

    @property
    def position_consistency(self) -> float | None:
        """The share of pairs (of those answered in both orders) whose two orders agree; None before any."""
        return self.consistent_pairs / self.both_orders if self.both_orders else None

    @property
    def first_position_share(self) -> float | None:
        """The share of answers (of those naming a position) naming the first shown; None before any."""
        named = self.named_first + self.named_second
        return self.named_first / named if named else None

    def as_dict(self) -> dict:
        return {
            **{k: getattr(self, k) for k in self.COUNTS},
            "position_consistency": self.position_consistency,
            "first_position_share": self.first_position_share,
        }


class JudgeUnreadableError(UserError):
    """Most of the judge's answers named neither response: scores built from the rest would be mostly 0.5."""


class JudgePositionBiasError(UserError):
    """Nearly every answer named the same position: the two orders cancel, and scores carry no signal."""


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

    Position bias. Every scoring logs the judge's position consistency (JudgeStats): a judge that names the
    same position whichever order it is shown cancels itself to 0.5 on every pair. When more than
    `max_position_bias` of the answers that name a position name the same one (once at least
    POSITION_BIAS_MIN_ANSWERS do), `score` refuses (JudgePositionBiasError): the scores would carry no signal.

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
        max_position_bias: float = 0.9,
    ):
        if verdict not in VERDICTS:
            raise UserError(f"judge verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
        if not 0 <= max_invalid <= 1:
            raise UserError("judge max_invalid is a share of the answers, between 0 and 1")
        if not 0.5 <= max_position_bias <= 1:
            raise UserError("judge max_position_bias is a share of the answers naming one position, between 0.5 and 1")
        self.max_position_bias = max_position_bias
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
        shown_first = self._verdict(self._ask(prompt, first, second))  # P(first better): first shown as A
        shown_second = self._verdict(self._ask(prompt, second, first))  # P(second better): first shown as B
        self.stats.add_pair(shown_first, shown_second)
        results = [v for v in (shown_first, None if shown_second is None else 1.0 - shown_second) if v is not None]
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
        """Log what the judge answered and its position consistency; refuse when most answers named neither
        response, or when nearly all that named one named the same position."""
        s = self.stats
        logger.info(
            "judge %s (verdict: %s): %d answers, %d unreadable, %d pairs undecided, %d from the answer log; %s",
            self.model,
            self.verdict,
            s.answers,
            s.invalid_answers,
            s.undecided_pairs,
            s.cached,
            self._position_summary(),
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
        named = s.named_first + s.named_second
        most = max(s.named_first, s.named_second)
        if named >= POSITION_BIAS_MIN_ANSWERS and most > self.max_position_bias * named:
            position = "first (A)" if s.named_first >= s.named_second else "second (B)"
            if self.verdict == "logprobs":
                why = "its P(A) follows the position more than the responses: the two orders cancel to about 0.5"
                hint = "a stronger judge model"
            else:
                why = "it answers by position, not by the responses: the two orders cancel to 0.5, no signal"
                hint = "verdict: logprobs or a stronger judge model"
            raise JudgePositionBiasError(
                f"the judge {self.model} at {self.url} named the {position} position in {most} of {named} answers "
                f"(more than max_position_bias {self.max_position_bias:.0%}; {self._position_summary()}); {why}; "
                f"try {hint} (max_position_bias: 1 accepts it)"
            )

    def _position_summary(self) -> str:
        s = self.stats
        named = s.named_first + s.named_second
        if not named:
            return "no answer named a position"
        consistency = (
            f"position consistency {s.consistent_pairs} of {s.both_orders} pairs ({s.position_consistency:.0%})"
            if s.both_orders
            else "no pair named a position in both orders"
        )
        share = s.first_position_share
        return f"{consistency}, the first position named in {s.named_first} of {named} answers ({share:.0%})"

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
# Fewer answers naming a position than this say too little about a judge's position bias to refuse it.
POSITION_BIAS_MIN_ANSWERS = 8
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
