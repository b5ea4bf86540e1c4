"""Reward sources behind one interface, `score(prompts, completions) -> list[float]`, and the one place a config's
reward mapping becomes one (`SOURCE_TYPES`: each type's keys and builder):

  * `RewardModel`: a Hugging Face sequence-classification model (one logit, or two: logit[1] - logit[0]) with
    its own tokenizer: the conversation rendered with its chat template (or raw text), batched, on its device;
  * `CallableReward`: a Python function named as "module:function" (or passed directly), called as TRL's
    GRPOTrainer calls reward functions when it takes **kwargs (the prompt row's columns included);
  * `InstructionsReward`: IFEval's verifiable-instruction checks (cringe.instructions) on each prompt row's
    `instruction_id_list` and `kwargs`;
  * `PairwiseJudge` (cringe.rewards.judge): an LLM judge over the OpenAI-compatible chat API.

Sources that read more of a sample than its prompt and completion (`takes_samples`) have
`score_samples(samples) -> [{score, ...}]` (cringe.loop.stages.score_records): the score (None: no reward, which
pairing leaves out) and what else the source keeps per sample in scores.jsonl (a binary `label`, per-instruction
results, a function's `log_extra` columns).
"""

from __future__ import annotations

import asyncio
import difflib
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


def _check_scores(scores, n: int, source: str, allow_none: bool = False) -> list[float | None]:
    """One finite float per completion; None kept where `allow_none` (a reward function's "no reward")."""
    if scores is None or isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise UserError(f"{source} must return a list of scores, got {type(scores).__name__}")
    scores = [None if s is None and allow_none else float(s) for s in scores]
    if len(scores) != n:
        raise UserError(f"{source} returned {len(scores)} scores for {n} completions")
    bad = [i for i, s in enumerate(scores) if s is not None and not math.isfinite(s)]
    if bad:
        raise UserError(f"{source} returned non-finite scores at positions {bad[:10]} (None means no reward)")
    return scores


# The keyword arguments TRL's GRPOTrainer passes under their own names; a prompt column of one of these names
# could not reach the function.
TRL_ARGUMENTS = ("prompts", "completions", "completion_ids", "log_extra", "log_metric")


class CallableReward:
    """A Python function as a reward; `spec` may be "package.module:function". `kwargs` (the config's) are passed
    on every call. It is called one of two ways, read from its signature:

      * `fn(prompts, completions) -> list[float]`, positionally, prompts as text: a function without **kwargs;
      * TRL's way (GRPOTrainer._calculate_rewards, TRL 1.16), for a function that takes **kwargs:
        `fn(prompts=, completions=, completion_ids=, log_extra=, log_metric=, **columns)`. A chat prompt comes as
        its messages and its completion as `[{"role": "assistant", "content": text}]`; a text prompt and its
        completion as text. completion_ids are the sampled token ids (a final EOS kept, as TRL keeps it). Each
        column of the prompt rows but `prompt` (IFEval's `instruction_id_list`, a dataset's answer) is a keyword
        argument holding one value per completion. `log_extra(column, values)` stores one value per completion
        in scores.jsonl (under `log_extra`), `log_metric(name, value)` logs a scalar. TRL's `trainer_state` and
        `environments` are not passed: the loop has no trainer while it scores.

    Either way it returns one score per completion; None is "no reward" (TRL reads it as NaN): pairing leaves the
    sample out. An async function is run to completion.
    """

    takes_samples = True  # score_samples reads the prompt rows' columns and the token ids

    def __init__(self, spec: str | Callable, kwargs: dict | None = None):
        if isinstance(spec, str):
            module, _, name = spec.partition(":")
            if not module or not name:
                raise UserError(f"reward function must be given as 'module:function', got {spec!r}")
            spec = getattr(importlib.import_module(module), name)
        self.fn, self.name = spec, getattr(spec, "__qualname__", repr(spec))
        self.kwargs = dict(kwargs or {})
        try:
            parameters = inspect.signature(spec).parameters
        except (TypeError, ValueError):  # a builtin or extension function: called the plain way
            parameters = {}
        self.trl_style = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self._required = [
            n
            for n, p in parameters.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]

    def score(self, prompts: Sequence, completions: Sequence[str]) -> list[float | None]:
        """Scores of bare prompts and completions (no columns, no token ids)."""
        if not self.trl_style:
            return self._positional(list(prompts), completions)
        return [r["score"] for r in self._trl(list(prompts), list(completions), None, {})]

    def score_samples(self, samples) -> list[dict]:
        """{score} per sample (cringe.generation.Sample, carrying its prompt's text, messages and columns), and
        `log_extra` where the function logged any."""
        if not self.trl_style:
            return [
                {"score": r} for r in self._positional([s.prompt for s in samples], [s.completion for s in samples])
            ]
        names = sorted({c for s in samples for c in (s.columns or {})})
        columns = {c: [(s.columns or {}).get(c) for s in samples] for c in names}
        prompts = [s.prompt_messages if s.prompt_messages is not None else s.prompt for s in samples]
        ids = [list(s.completion_ids) for s in samples]
        return self._trl(prompts, [s.completion for s in samples], ids, columns)

    def _positional(self, prompts: list, completions: Sequence[str]) -> list[float | None]:
        out = _run(self.fn(list(prompts), list(completions), **self.kwargs))
        return _check_scores(out, len(completions), self.name, allow_none=True)

    def _trl(self, prompts: list, completions: list[str], completion_ids, columns: dict) -> list[dict]:
        clash = sorted(set(columns) & (set(TRL_ARGUMENTS) | set(self.kwargs)))
        if clash:
            raise UserError(
                f"reward function {self.name}: the prompt rows' column(s) {clash} clash with the arguments it "
                f"gets under those names ({', '.join(TRL_ARGUMENTS)}, and the config's kwargs); rename them"
            )
        completions = [
            [{"role": "assistant", "content": c}] if isinstance(p, list) else c for p, c in zip(prompts, completions)
        ]
        extra: dict[str, list] = {}
        metrics: dict[str, list[float]] = {}
        arguments = {
            "prompts": prompts,
            "completions": completions,
            **({"completion_ids": completion_ids} if completion_ids is not None else {}),
            "log_extra": lambda column, values: extra.setdefault(column, []).extend(values),
            "log_metric": lambda name, value: metrics.setdefault(name, []).append(float(value)),
            **columns,
            **self.kwargs,
        }
        missing = [n for n in self._required if n not in arguments]
        if missing:
            have = ", ".join(sorted(columns)) or "none"
            raise UserError(
                f"reward function {self.name} needs {', '.join(missing)}, which the prompt rows do not have "
                f"(their columns: {have}; samples written before samples carried their prompt's columns have none: "
                "sample them again)"
            )
        scores = _check_scores(_run(self.fn(**arguments)), len(prompts), self.name, allow_none=True)
        for name, values in metrics.items():
            logger.info(
                "reward function %s: %s = %g (mean of %d)", self.name, name, sum(values) / len(values), len(values)
            )
        records = [{"score": score} for score in scores]
        for column, values in extra.items():
            if len(values) != len(records):
                raise UserError(
                    f"reward function {self.name}: log_extra({column!r}) got {len(values)} values for "
                    f"{len(records)} completions"
                )
            for record, value in zip(records, values):
                record.setdefault("log_extra", {})[column] = value
        return records


def _run(result):
    """An async reward function's result (TRL runs those too)."""
    return asyncio.run(result) if inspect.isawaitable(result) else result


class InstructionsReward:
    """IFEval's verifiable instructions (cringe.instructions) as the reward: each prompt row's `instruction_id_list`
    and `kwargs` columns, checked on its completion. The score is the fraction of the row's instructions followed
    (loose, IFEval's variants of the response; strict with `strict`), the label beside it "all followed, strict"
    (binary pairing takes it instead of a threshold), and the per-instruction results stay in scores.jsonl. A
    completion of fewer than `min_words` words scores 0 (checks of form alone pass a near-empty answer)."""

    takes_samples = True

    def __init__(self, strict: bool = False, min_words: int = 0):
        from cringe.instructions import package  # the checkers' package: an optional extra, named when missing

        package()
        self.strict, self.min_words = strict, min_words

    @staticmethod
    def rows(samples) -> list[dict]:
        """The prompt rows the samples answer, as cringe.instructions reads them."""
        rows = []
        for s in samples:
            columns = s.columns or {}
            missing = [c for c in INSTRUCTION_COLUMNS if c not in columns]
            if missing:
                raise UserError(
                    f"sample {s.sample_id} of prompt {s.prompt_id}: no {' or '.join(missing)} column; the "
                    "instructions reward reads IFEval's columns of each prompt row (samples written before samples "
                    "carried their prompt's columns have none: sample them again)"
                )
            rows.append({"prompt": s.prompt_messages if s.prompt_messages is not None else s.prompt, **columns})
        return rows

    def score_samples(self, samples) -> list[dict]:
        from cringe.instructions import score_rows

        results = score_rows(
            self.rows(samples), [s.completion for s in samples], strict=self.strict, min_words=self.min_words
        )
        return [
            {
                "score": r["score"],
                "label": r["label"],
                "instructions": {k: r[k] for k in ("instruction_id_list", "strict", "loose")},
                "words": r["words"],
            }
            for r in results
        ]

    def score(self, prompts: Sequence, completions: Sequence[str]) -> list[float]:
        raise UserError(
            "the instructions reward checks each prompt row's instruction_id_list and kwargs: it scores samples "
            "that carry them (cringe iterate, cringe score), not bare prompts and completions"
        )


INSTRUCTION_COLUMNS = ("instruction_id_list", "kwargs")


def _check_instruction_prompts(spec: dict, prompts) -> None:
    """Every prompt row has IFEval's columns, valid (cringe.instructions.validate_rows names the row and field)."""
    from cringe.instructions import validate_rows

    rows = []
    for p in prompts:
        columns = p.columns or {}
        missing = [c for c in INSTRUCTION_COLUMNS if c not in columns]
        if missing:
            raise UserError(
                f"prompt {p.prompt_id}: no {' or '.join(missing)} column; the instructions reward needs prompt rows "
                "in IFEval's format (key, prompt, instruction_id_list, kwargs)"
            )
        rows.append({"prompt": p.messages if p.messages is not None else p.text, **columns})
    validate_rows(rows)


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
            # the leading BOS or [CLS] survives the cut: a BERT-style classifier reads its score off [CLS]
            leading = {t for t in (bos, tok.cls_token_id) if t is not None}
            head = [ids[0]] if ids[0] in leading else []
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
    knows, a check of its values that needs nothing loaded, the builder (spec without `type`, device) -> source, and
    what it needs of the prompts (spec, prompts), checked before anything is sampled (None: nothing)."""

    required: dict[str, str]
    known: frozenset[str]
    build: Callable[[dict, str | None], object]
    check_values: Callable[[dict, str], None] = lambda spec, where: None
    check_prompts: Callable[[dict, list], None] | None = None


def _parameters(fn, *leave_out: str) -> frozenset[str]:
    """A constructor's keyword parameters: the keys a spec may give, read from the code so they cannot drift."""
    return frozenset(inspect.signature(fn).parameters) - {"self", *leave_out}


def _build_callable(spec: dict, device: str | None) -> CallableReward:
    return CallableReward(spec["function"], spec.get("kwargs"))


def _build_instructions(spec: dict, device: str | None) -> InstructionsReward:
    return InstructionsReward(**spec)


def _check_instructions_values(spec: dict, where: str) -> None:
    if not isinstance(spec.get("strict", False), bool):
        raise UserError(f"{where}: strict must be true or false; got {spec['strict']!r}")
    words = spec.get("min_words", 0)
    if not isinstance(words, int) or isinstance(words, bool) or words < 0:
        raise UserError(f"{where}: min_words must be a whole number >= 0; got {words!r}")


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
    "instructions": SourceType(
        {},
        _parameters(InstructionsReward.__init__),
        _build_instructions,
        _check_instructions_values,
        _check_instruction_prompts,
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
    | {type: judge, base_url: ..., model: ..., api_key_env: ...} | {type: instructions, strict: false}. device: where a reward model runs unless its spec
    says (auto: cuda when available); on a GPU it loads in bfloat16 unless its spec gives a dtype."""
    kind = check_reward_spec(spec)
    return SOURCE_TYPES[kind].build({k: v for k, v in spec.items() if k != "type"}, device)


def checks_prompts(spec: dict | None) -> bool:
    """Whether the reward source of `spec` needs something of the prompts (check_prompts)."""
    return (
        isinstance(spec, dict) and spec.get("type") in SOURCE_TYPES and bool(SOURCE_TYPES[spec["type"]].check_prompts)
    )


def check_prompts(spec: dict | None, prompts) -> None:
    """What the reward source of `spec` needs of the prompts (cringe.data.Prompt), checked before anything is
    sampled: for the instructions reward, IFEval's columns on every row, valid."""
    if checks_prompts(spec):
        SOURCE_TYPES[spec["type"]].check_prompts(spec, prompts)


# What TRL's online trainers pass a reward function besides the prompt rows' columns (GRPOTrainer 1.16).
TRL_CALL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


def trl_reward_function(source, name: str = "reward") -> Callable:
    """A loaded reward source as the reward function TRL's online trainers (GRPOTrainer, RLOOTrainer) call:
    `fn(prompts=, completions=, completion_ids=, **columns) -> list[float | None]`. A source that reads whole
    samples (the instructions reward, a TRL-style function) gets each completion as a `Sample` carrying its prompt
    row's columns, exactly as the loop's scoring stage gives it; the others get prompts and completion texts. So a
    method trained by TRL sees the same reward, computed by the same code, as the loop's methods."""
    from cringe.generation import Sample

    def reward(prompts, completions, completion_ids=None, **columns):
        for key in TRL_CALL_EXTRAS:
            columns.pop(key, None)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if not getattr(source, "takes_samples", False):
            return _check_scores(source.score(list(prompts), texts), len(texts), name, allow_none=True)
        samples = [
            Sample(
                prompt_id=i,
                sample_id=0,
                prompt_ids=[],
                completion_ids=list(completion_ids[i]) if completion_ids is not None else [],
                completion=text,
                finish_reason="stop",
                prompt=_prompt_text(prompt),
                prompt_messages=[dict(m) for m in prompt] if isinstance(prompt, list) else None,
                columns={c: values[i] for c, values in columns.items()},
            )
            for i, (prompt, text) in enumerate(zip(prompts, texts))
        ]
        return _check_scores([r["score"] for r in source.score_samples(samples)], len(texts), name, allow_none=True)

    reward.__name__ = name  # TRL logs each reward function under its name
    return reward
