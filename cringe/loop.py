"""The iterative loop (Iterative Pairwise Cringe, Iterative binary Cringe, Iterative DPO): DESIGN §1.4.

Round k, starting from policy M_{k-1} (M_0 = the initial model):
    samples.jsonl   N completions per prompt sampled from M_{k-1}
    scores.jsonl    one reward per sample
    pairs.jsonl     best-vs-worst pairs (or threshold-labelled rows for binary Cringe), with pairing.json
    model/          M_k, trained from M_{k-1} on this round's data (optionally with earlier rounds')
    eval.json       M_k against M_0 on held-out prompts
Run directory: round-1/, round-2/, ..., state.json (the config and its hash), baseline.json (M_0's evaluation).

Every file is written to a temporary name and renamed, so a file that exists is complete. Resuming (running
`cringe iterate` again on the same directory) skips every finished step and continues at the first one
missing; sampling continues from its last finished shard and training from its last checkpoint. Sampling is
seeded per batch from the prompt index, so a resumed run samples what the uninterrupted run would have.
Resuming with a config that changes results is refused, naming the keys that differ; `rounds` may grow.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SHARD_PROMPTS = 64  # prompts per sampling shard: the unit of resume inside a round's sampling step


@dataclass
class IterateConfig:
    model: str
    prompts: str
    output_dir: str
    reward: dict
    rounds: int = 3
    loss: str = "pairwise_cringe"  # pairwise_cringe | binary_cringe | dpo | ipo | hinge
    sampling: dict = field(default_factory=dict)  # cringe.generation.SamplingConfig fields
    min_gap: float = 0.0
    binary_threshold: float | None = None  # binary_cringe: good when score >= threshold (default: > the mean)
    drop_truncated: bool = False
    mix_previous: bool = False  # train round k on rounds 1..k, not only k
    dpo_reference: str = "previous"  # previous | initial
    train: dict = field(default_factory=dict)  # CringeConfig fields
    eval_prompts: str | None = None
    eval_reward: dict | None = None  # default: reward
    eval_samples: int = 1
    eval_every: int = 1  # evaluate rounds k with k % eval_every == 0, and always the last round
    max_prompts: int | None = None
    # Fresh prompts each round: round k samples prompts [(k-1)*m, k*m) of the list (wrapping around), so R rounds
    # of m prompts label as many samples as one round over R*m prompts. None: every round uses every prompt.
    round_prompts: int | None = None
    max_eval_prompts: int | None = None
    max_prompt_length: int = 512
    dtype: str = "float32"
    sampling_dtype: str | None = None  # e.g. bfloat16: the fast sampling path on CPUs with AVX512-BF16; None = dtype
    backend: str = "auto"  # auto | transformers | vllm
    seed: int = 0
    trust_remote_code: bool = False

    def __post_init__(self):
        from .trainer import LOSSES

        if self.loss not in LOSSES or self.loss == "sft":
            raise ValueError(f"loss must be one of pairwise_cringe, binary_cringe, dpo, ipo, hinge; got {self.loss!r}")
        if self.dpo_reference not in ("previous", "initial"):
            raise ValueError("dpo_reference must be 'previous' or 'initial'")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.eval_every < 1:
            raise ValueError("eval_every must be >= 1")
        if self.round_prompts is not None and self.round_prompts < 1:
            raise ValueError("round_prompts must be >= 1 (or null for every prompt in every round)")
        from .generation import SamplingConfig

        SamplingConfig(**self.sampling)  # validates the keys and values now, not rounds later
        owned = sorted({"loss", "output_dir"} & set(self.train))
        if owned:
            raise ValueError(f"train: {owned} are set by the loop (use the top-level keys loss / output_dir)")

    # Keys that do not change what a round computes: changing them on resume is allowed.
    RESUMABLE_KEYS = ("rounds", "output_dir", "backend")

    def result_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in self.RESUMABLE_KEYS:
            d.pop(key)
        return d

    def result_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.result_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ----- atomic files ----------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def publish_model(trainer, round_dir: Path) -> Path:
    """Save the trained model (LoRA merged) with its log as round_dir/model, renamed into place once complete,
    and drop the round's checkpoints."""
    from .cli import save_for_inference

    tmp = round_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_for_inference(trainer, str(tmp))
    write_json(tmp / "train_log.json", trainer.state.log_history)
    os.replace(tmp, round_dir / "model")
    shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)
    return round_dir / "model"


def _contiguous_runs(prompts):
    """Split prompts into runs of consecutive prompt ids (a wrapped round slice has two)."""
    runs: list[list] = []
    for p in prompts:
        if runs and p.prompt_id == runs[-1][-1].prompt_id + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


# ----- the loop ------------------------------------------------------------------------------------------


class IterativeRun:
    def __init__(self, config: IterateConfig, on_step=None):
        self.config = config
        self.on_step = on_step  # called as on_step(round, step_name, seconds) after each finished step
        self.dir = Path(config.output_dir)
        self._tokenizer = None
        self._prompts: dict[bool, list] = {}
        self._reward = None
        self._eval_reward = None

    # lazily built, shared pieces
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model, self.config.trust_remote_code)
        return self._tokenizer

    def reward(self, evaluation: bool = False):
        from .rewards import load_reward_source

        if evaluation and self.config.eval_reward is not None:
            if self._eval_reward is None:
                self._eval_reward = load_reward_source(self.config.eval_reward)
            return self._eval_reward
        if self._reward is None:
            self._reward = load_reward_source(self.config.reward)
        return self._reward

    def model_path(self, k: int) -> str:
        """Where M_k lives: the initial spec for k = 0."""
        return self.config.model if k == 0 else str(self.dir / f"round-{k}" / "model")

    def load_model(self, k: int, dtype: str | None = None):
        from .models import load_model

        return load_model(self.model_path(k), self.tokenizer, dtype or self.config.dtype, self.config.trust_remote_code)

    # state
    def check_state(self) -> dict:
        state_path = self.dir / "state.json"
        current = {"config": dataclasses.asdict(self.config), "hash": self.config.result_hash()}
        if state_path.exists():
            saved = json.loads(state_path.read_text())
            if saved["hash"] != current["hash"]:
                old = {k: v for k, v in saved["config"].items() if k not in IterateConfig.RESUMABLE_KEYS}
                new = self.config.result_dict()
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"{self.dir} holds a run with a different configuration (keys that differ: {diff}); "
                    "use another output_dir, or restore those values to resume"
                )
            return saved
        self.dir.mkdir(parents=True, exist_ok=True)
        current["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(state_path, current)
        return current

    def finish_step(self, k: int, step: str, seconds: float) -> None:
        """A step of round k is done: record it in state.json, log it, tell `on_step`."""
        self.log_step(k, step, seconds)
        logger.info("round %d: %s done in %.1fs", k, step, seconds)
        if self.on_step is not None:
            self.on_step(k, step, seconds)

    def log_step(self, k: int, step: str, seconds: float) -> None:
        state_path = self.dir / "state.json"
        state = json.loads(state_path.read_text())
        state.setdefault("steps", []).append({"round": k, "step": step, "seconds": round(seconds, 1),
                                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_json(state_path, state)

    # steps
    def prompts(self, evaluation: bool = False):
        """The training (or held-out) prompts, read, validated and tokenised once per run."""
        from .data import load_prompts

        if evaluation not in self._prompts:
            c = self.config
            source = c.eval_prompts if evaluation else c.prompts
            limit = c.max_eval_prompts if evaluation else c.max_prompts
            self._prompts[evaluation] = load_prompts(source, self.tokenizer, max_prompt_length=c.max_prompt_length,
                                                     limit=limit)
        return self._prompts[evaluation]

    def round_prompt_list(self, k: int):
        """The prompts round k samples: all of them, or round k's slice of `round_prompts` (prompt ids stay the
        positions in the full list)."""
        prompts, m = self.prompts(), self.config.round_prompts
        if m is None:
            return prompts
        if m > len(prompts):
            raise ValueError(f"round_prompts={m} but only {len(prompts)} prompts")
        start = ((k - 1) * m) % len(prompts)
        return (prompts + prompts)[start:start + m]

    def sample(self, model_index: int, prompts, out_path: Path, n: int | None = None, shard_dir: Path | None = None):
        """Sample from M_{model_index}, one shard of SHARD_PROMPTS prompts at a time (each shard a file)."""
        from .generation import Sample, SamplingConfig, make_sampler

        settings = dict(self.config.sampling)
        if n is not None:
            settings["n"] = n
        sampling = SamplingConfig(**{"seed": self.config.seed, **settings})
        shard_dir = shard_dir or out_path.parent / f".{out_path.stem}-shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        sampler = None
        samples: list[Sample] = []
        for start in range(0, len(prompts), SHARD_PROMPTS):
            shard = shard_dir / f"shard-{start:07d}.jsonl"
            if not shard.exists():
                if sampler is None:
                    model = self.load_model(model_index, self.config.sampling_dtype)
                    sampler = make_sampler(self.config.backend, model, self.tokenizer, self.model_path(model_index))
                shard_prompts = prompts[start:start + SHARD_PROMPTS]
                shard_samples = []
                for run in _contiguous_runs(shard_prompts):
                    shard_samples += sampler.sample([p.ids for p in run], sampling, prompt_ids_offset=run[0].prompt_id)
                write_jsonl(shard, [s.to_dict() for s in shard_samples])
            samples += [Sample.from_dict(d) for d in read_jsonl(shard)]
        write_jsonl(out_path, [s.to_dict() for s in samples])
        shutil.rmtree(shard_dir, ignore_errors=True)
        return samples

    def score(self, prompts, samples, out_path: Path, evaluation: bool = False) -> list[float]:
        text = {p.prompt_id: p.text for p in prompts}
        scores = self.reward(evaluation).score([text[s.prompt_id] for s in samples], [s.completion for s in samples])
        write_jsonl(out_path, [{"prompt_id": s.prompt_id, "sample_id": s.sample_id, "score": r}
                               for s, r in zip(samples, scores)])
        return scores

    def pair(self, samples, scores, round_dir: Path) -> list[dict]:
        from .pairing import best_vs_worst, by_threshold

        c = self.config
        if c.loss == "binary_cringe":
            threshold = c.binary_threshold
            if threshold is None:
                # Default: good means above this round's mean reward (a median would call every sample good
                # when more than half share the lowest score).
                threshold = math.nextafter(sum(scores) / len(scores), math.inf)
            rows, report = by_threshold(samples, scores, threshold=threshold, drop_truncated=c.drop_truncated)
        else:
            rows, report = best_vs_worst(samples, scores, min_gap=c.min_gap, drop_truncated=c.drop_truncated)
        write_json(round_dir / "pairing.json", report.as_dict())
        write_jsonl(round_dir / "pairs.jsonl", rows)
        logger.info("round %s pairing: %s", round_dir.name, report.as_dict())
        return rows

    def train(self, k: int, rows: list[dict], round_dir: Path) -> None:
        from .pairing import as_training_data
        from .trainer import CringeConfig, CringeTrainer

        c = self.config
        if c.mix_previous:
            rows = [r for j in range(1, k) for r in read_jsonl(self.dir / f"round-{j}" / "pairs.jsonl")] + rows
        data = as_training_data(rows, "binary" if c.loss == "binary_cringe" else "pairwise")
        train_args = {"save_strategy": "epoch", "report_to": "none", "seed": c.seed + k, **c.train}
        args = CringeConfig(output_dir=str(round_dir / "checkpoints"), loss=c.loss, **train_args)
        model = self.load_model(k - 1)
        ref_model = self.load_model(0) if c.loss in ("dpo", "ipo", "hinge") and c.dpo_reference == "initial" else None
        trainer = CringeTrainer(model=model, args=args, train_dataset=data, processing_class=self.tokenizer,
                                ref_model=ref_model)
        checkpoints = sorted((round_dir / "checkpoints").glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
        publish_model(trainer, round_dir)

    def baseline(self):
        """M_0's held-out samples and scores: computed once, the reference every round is compared with."""
        prompts = self.prompts(evaluation=True)
        path = self.dir / "baseline_samples.jsonl"
        samples = self._load_or_sample(0, prompts, path)
        scores_path = self.dir / "baseline_scores.jsonl"
        if scores_path.exists():
            scores = [r["score"] for r in read_jsonl(scores_path)]
        else:
            scores = self.score(prompts, samples, scores_path, evaluation=True)
        return prompts, samples, scores

    def _load_or_sample(self, model_index, prompts, path):
        from .generation import Sample

        if path.exists():
            return [Sample.from_dict(d) for d in read_jsonl(path)]
        return self.sample(model_index, prompts, path, n=self.config.eval_samples)

    def evaluate(self, k: int, round_dir: Path) -> dict:
        from .evaluate import kl_estimate, mean_by_prompt, mean_with_ci, sequence_logprobs, text_metrics, win_rate

        prompts, base_samples, base_scores = self.baseline()
        samples = self._load_or_sample(k, prompts, round_dir / "eval_samples.jsonl")
        scores_path = round_dir / "eval_scores.jsonl"
        scores = ([r["score"] for r in read_jsonl(scores_path)] if scores_path.exists()
                  else self.score(prompts, samples, scores_path, evaluation=True))
        per_prompt = mean_by_prompt(samples, scores)
        base_per_prompt = mean_by_prompt(base_samples, base_scores)
        ids = sorted(per_prompt)
        rows = [{"prompt_ids": s.prompt_ids, "completion_ids": [s.completion_ids]} for s in samples]
        pad = self.tokenizer.pad_token_id
        policy_lp = sequence_logprobs(self.load_model(k), rows, pad)
        ref_lp = sequence_logprobs(self.load_model(0), rows, pad)
        result = {
            "round": k,
            "win_rate_vs_initial": win_rate([per_prompt[i] for i in ids], [base_per_prompt[i] for i in ids],
                                            seed=self.config.seed),
            "reward": mean_with_ci(scores, seed=self.config.seed),
            "initial_reward": mean_with_ci(base_scores, seed=self.config.seed),
            "kl_to_initial": kl_estimate(policy_lp, ref_lp, seed=self.config.seed),
            **text_metrics([s.completion for s in samples], [s.num_tokens for s in samples],
                           [s.finish_reason for s in samples]),
        }
        write_json(round_dir / "eval.json", result)
        return result

    def run(self) -> list[dict]:
        from tqdm.auto import tqdm

        c = self.config
        self.check_state()
        evaluations = []
        started = time.time()
        for k in range(1, c.rounds + 1):
            round_dir = self.dir / f"round-{k}"
            round_dir.mkdir(parents=True, exist_ok=True)
            steps = [
                ("samples.jsonl", lambda: self.sample(k - 1, self.round_prompt_list(k), round_dir / "samples.jsonl")),
                ("scores.jsonl", lambda: self.score(self.prompts(), self._samples(round_dir), round_dir / "scores.jsonl")),
                ("pairs.jsonl", lambda: self.pair(self._samples(round_dir), self._scores(round_dir), round_dir)),
                ("model", lambda: self.train(k, read_jsonl(round_dir / "pairs.jsonl"), round_dir)),
            ]
            if c.eval_prompts and (k % c.eval_every == 0 or k == c.rounds):
                steps.append(("eval.json", lambda: self.evaluate(k, round_dir)))
            for name, step in tqdm(steps, desc=f"round {k}/{c.rounds}", leave=False):
                if (round_dir / name).exists():
                    continue
                t0 = time.time()
                step()
                self.finish_step(k, name, time.time() - t0)
                logger.info("round %d: %s (%.1fs since this run started)", k, name, time.time() - started)
            if (round_dir / "eval.json").exists():
                evaluations.append(json.loads((round_dir / "eval.json").read_text()))
        state = json.loads((self.dir / "state.json").read_text())
        state["finished_rounds"] = c.rounds
        write_json(self.dir / "state.json", state)
        return evaluations

    def _samples(self, round_dir: Path):
        from .generation import Sample

        return [Sample.from_dict(d) for d in read_jsonl(round_dir / "samples.jsonl")]

    def _scores(self, round_dir: Path) -> list[float]:
        return [r["score"] for r in read_jsonl(round_dir / "scores.jsonl")]


def evaluation_table(evaluations: list[dict]) -> str:
    from .evaluate import format_table

    rows = []
    for e in evaluations:
        w = e["win_rate_vs_initial"]
        rows.append({"round": e["round"], "win": w["win_rate"], "ci": f"{w['ci_low']:.3f}..{w['ci_high']:.3f}",
                     "reward": e["reward"]["mean"], "initial": e["initial_reward"]["mean"],
                     "kl": e["kl_to_initial"]["mean"], "len": e["length_tokens"], "d2": e["distinct_2"],
                     "rep": e["repeated_3gram_rate"]})
    return format_table(rows, [("round", "round"), ("win rate vs M0", "win"), ("95% CI", "ci"), ("reward", "reward"),
                               ("M0 reward", "initial"), ("KL(pi||M0)", "kl"), ("length", "len"),
                               ("distinct-2", "d2"), ("repeated 3-grams", "rep")])


def load_config(path: str | None, overrides: list[str]) -> IterateConfig:
    """YAML file plus `--key value` overrides; dotted keys reach nested mappings (`--train.learning_rate 1e-5`)."""
    import yaml

    values: dict = {}
    if path:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    values = copy.deepcopy(values)
    i = 0
    while i < len(overrides):
        key = overrides[i]
        if not key.startswith("--") or i + 1 >= len(overrides):
            raise ValueError(f"expected --key value pairs, got {overrides[i:]}")
        target, parts = values, key[2:].replace("-", "_").split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = yaml.safe_load(overrides[i + 1])
        i += 2
    known = {f.name for f in dataclasses.fields(IterateConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown iterate config keys {unknown}; known: {sorted(known)}")
    return IterateConfig(**values)
