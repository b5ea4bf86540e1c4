"""The iterative loop (Iterative Pairwise Cringe, Iterative binary Cringe, Iterative DPO): docs/design.md.

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

from . import rundir
from .errors import UserError
from .files import read_json, read_jsonl, write_json, write_jsonl
from .rundir import RunDir

logger = logging.getLogger(__name__)

SHARD_PROMPTS = 64  # prompts per sampling shard: the unit of resume inside a round's sampling step


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


ITERATE_LOSSES = ("pairwise_cringe", "binary_cringe", "dpo", "ipo", "hinge")


@dataclass
class IterateConfig:
    """One iterative run. Every field is a YAML key and a flag of `cringe iterate`; `reward`, `eval_reward`,
    `sampling` and `train` are sections (`--train.learning_rate 1e-5`)."""

    model: str = field(metadata=_help("the initial policy M_0: hub id, local folder or packaged spec"))
    prompts: str = field(metadata=_help("training prompts (any accepted data format; the prompt column is used)"))
    output_dir: str = field(metadata=_help("the run directory; rerun the same command to resume"))
    reward: dict = field(default=None, metadata=_help("reward source: {type: callable|model|judge, ...}"))
    rounds: int = field(default=3, metadata=_help("rounds of sample -> score -> pair -> train"))
    loss: str = field(default="pairwise_cringe", metadata=_help("training loss", choices=ITERATE_LOSSES))
    sampling: dict = field(default_factory=dict, metadata=_help("cringe.generation.SamplingConfig fields"))
    min_gap: float = field(default=0.0, metadata=_help("drop prompts whose best-worst reward gap is below this"))
    binary_threshold: float | None = field(
        default=None, metadata=_help("binary_cringe: good when score >= threshold (default: above the round's mean)"))
    drop_truncated: bool = field(default=False, metadata=_help("never train on completions cut at max_new_tokens"))
    mix_previous: bool = field(default=False, metadata=_help("train round k on the rows of rounds 1..k"))
    dpo_reference: str = field(default="previous", metadata=_help("DPO family reference: the round's start or M_0",
                                                                   choices=("previous", "initial")))
    train: dict = field(default_factory=dict, metadata=_help("CringeConfig fields, plus LoRA: use_peft, lora_r, ..."))
    eval_prompts: str | None = field(default=None, metadata=_help("held-out prompts; none: no evaluation"))
    eval_reward: dict | None = field(default=None, metadata=_help("reward source for evaluation (default: reward)"))
    eval_samples: int = field(default=1, metadata=_help("samples per held-out prompt"))
    eval_every: int = field(default=1, metadata=_help("evaluate every k-th round (and always the last)"))
    max_prompts: int | None = None
    # Fresh prompts each round: round k samples prompts [(k-1)*m, k*m) of the list (wrapping around), so R rounds
    # of m prompts label as many samples as one round over R*m prompts. None: every round uses every prompt.
    round_prompts: int | None = field(default=None, metadata=_help("prompts per round, fresh each round"))
    max_eval_prompts: int | None = None
    max_prompt_length: int = 512
    dtype: str = field(default="float32", metadata=_help("weights for training and evaluation",
                                                         choices=("float32", "bfloat16", "float16", "auto")))
    sampling_dtype: str | None = field(default=None, metadata=_help(
        "e.g. bfloat16: the fast sampling path on CPUs with AVX512-BF16 (default: dtype)"))
    backend: str = field(default="auto", metadata=_help("sampler", choices=("auto", "transformers", "vllm")))
    seed: int = 0
    trust_remote_code: bool = field(default=False, metadata=_help("run model code from the hub (off by default)"))

    def __post_init__(self):
        if self.reward is None:
            raise UserError("reward is required: a section {type: callable|model|judge, ...}")
        if self.loss not in ITERATE_LOSSES:
            raise UserError(f"loss must be one of {', '.join(ITERATE_LOSSES)}; got {self.loss!r}")
        if self.dpo_reference not in ("previous", "initial"):
            raise UserError("dpo_reference must be 'previous' or 'initial'")
        if self.rounds < 1:
            raise UserError("rounds must be >= 1")
        if self.eval_every < 1:
            raise UserError("eval_every must be >= 1")
        if self.round_prompts is not None and self.round_prompts < 1:
            raise UserError("round_prompts must be >= 1 (or null for every prompt in every round)")
        from .generation import SamplingConfig

        try:
            SamplingConfig(**self.sampling)  # validates the keys and values now, not rounds later
        except TypeError as err:
            raise UserError(f"sampling: {err}") from None
        owned = sorted({"loss", "output_dir"} & set(self.train))
        if owned:
            raise UserError(f"train: {owned} are set by the loop (use the top-level keys loss / output_dir)")
        self.training_arguments(Path(self.output_dir) / "round-1")  # every train.* key and value checked now

    def training_arguments(self, round_dir: Path, seed_offset: int = 0):
        """(CringeConfig, LoraArguments) for a round: the train section over the loop's defaults."""
        from .trainer import CringeConfig, LoraArguments

        lora_keys = {f.name for f in dataclasses.fields(LoraArguments)}
        train = {"save_strategy": "epoch", "report_to": "none", "seed": self.seed + seed_offset, **self.train}
        lora = LoraArguments(**{k: v for k, v in train.items() if k in lora_keys})
        try:
            args = CringeConfig(output_dir=str(round_dir / "checkpoints"), loss=self.loss,
                                **{k: v for k, v in train.items() if k not in lora_keys})
        except (TypeError, ValueError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"train: {str(err).strip().splitlines()[0]}") from None
        return args, lora

    # Keys that do not change what a round computes: changing them on resume is allowed.
    RESUMABLE_KEYS = ("rounds", "output_dir", "backend")

    def result_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in self.RESUMABLE_KEYS:
            d.pop(key)
        return d

    def result_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.result_dict(), sort_keys=True).encode()).hexdigest()[:16]


def publish_model(trainer, round_dir: Path, *, base_model: str | None = None, data: str | None = None) -> Path:
    """Save the trained model (LoRA merged) with its log as round_dir/model, renamed into place once complete,
    and drop the round's checkpoints."""
    from .models import save_for_inference

    tmp = round_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_for_inference(trainer, str(tmp), base_model=base_model, data=data)
    write_json(tmp / "train_log.json", trainer.state.log_history)
    os.replace(tmp, round_dir / rundir.MODEL)
    shutil.rmtree(round_dir / rundir.CHECKPOINTS, ignore_errors=True)
    return round_dir / rundir.MODEL


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
        self.run_dir = RunDir(config.output_dir)
        self.dir = self.run_dir.path
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
        return self.config.model if k == 0 else str(self.run_dir.model(k))

    def load_model(self, k: int, dtype: str | None = None):
        from .models import load_model

        return load_model(self.model_path(k), self.tokenizer, dtype or self.config.dtype, self.config.trust_remote_code)

    # state
    def check_state(self) -> dict:
        state_path = self.run_dir.state_path
        current = {"config": dataclasses.asdict(self.config), "hash": self.config.result_hash()}
        if state_path.exists():
            saved = read_json(state_path)
            if saved["hash"] != current["hash"]:
                old = {k: v for k, v in saved["config"].items() if k not in IterateConfig.RESUMABLE_KEYS}
                new = self.config.result_dict()
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise UserError(
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
        state = self.run_dir.state()
        state.setdefault("steps", []).append({"round": k, "step": step, "seconds": round(seconds, 1),
                                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_json(self.run_dir.state_path, state)
        logger.info("round %d: %s done in %.1fs", k, step, seconds)
        if self.on_step is not None:
            self.on_step(k, step, seconds)

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
            raise UserError(f"round_prompts={m} but only {len(prompts)} prompts")
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
        from .stages import per_sample, score_samples

        scores = score_samples(self.reward(evaluation), prompts, samples)
        write_jsonl(out_path, per_sample(scores, samples))
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
        write_json(round_dir / rundir.PAIRING, report.as_dict())
        write_jsonl(round_dir / rundir.PAIRS, rows)
        logger.info("round %s pairing: %s", round_dir.name, report.as_dict())
        return rows

    def train(self, k: int, rows: list[dict], round_dir: Path) -> None:
        from .pairing import as_training_data
        from .trainer import CringeTrainer

        c = self.config
        if c.mix_previous:
            rows = [r for j in range(1, k) for r in read_jsonl(self.run_dir.file(j, rundir.PAIRS))] + rows
        data = as_training_data(rows, "binary" if c.loss == "binary_cringe" else "pairwise")
        args, lora = c.training_arguments(round_dir, seed_offset=k)
        model = self.load_model(k - 1)
        ref_model = self.load_model(0) if c.loss in ("dpo", "ipo", "hinge") and c.dpo_reference == "initial" else None
        trainer = CringeTrainer(model=model, args=args, train_dataset=data, processing_class=self.tokenizer,
                                ref_model=ref_model, peft_config=lora.peft_config())
        checkpoints = sorted(self.run_dir.checkpoints(k).glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
        publish_model(trainer, round_dir, base_model=self.model_path(k - 1),
                      data=f"round {k} of `cringe iterate`: {len(rows)} rows from {round_dir / rundir.PAIRS}")

    def baseline(self):
        """M_0's held-out samples and scores: computed once, the reference every round is compared with."""
        prompts = self.prompts(evaluation=True)
        samples = self._load_or_sample(0, prompts, self.run_dir.baseline_samples)
        scores_path = self.run_dir.baseline_scores
        if scores_path.exists():
            scores = self.run_dir.scores(scores_path)
        else:
            scores = self.score(prompts, samples, scores_path, evaluation=True)
        return prompts, samples, scores

    def _load_or_sample(self, model_index, prompts, path):
        if path.exists():
            return self.run_dir.samples(path)
        return self.sample(model_index, prompts, path, n=self.config.eval_samples)

    def evaluate(self, k: int, round_dir: Path) -> dict:
        """M_k against M_0 on the held-out prompts: cringe.evaluate.compare's schema plus the round."""
        from .evaluate import compare, comparison_table
        from .models import add_evaluation_to_card
        from .stages import completion_logprobs

        prompts, base_samples, base_scores = self.baseline()
        samples = self._load_or_sample(k, prompts, round_dir / rundir.EVAL_SAMPLES)
        scores_path = round_dir / rundir.EVAL_SCORES
        scores = (self.run_dir.scores(scores_path) if scores_path.exists()
                  else self.score(prompts, samples, scores_path, evaluation=True))
        pad = self.tokenizer.pad_token_id
        result = {"round": k, **compare(samples, scores, base_samples, base_scores,
                                        policy_logps=completion_logprobs(self.load_model(k), samples, pad),
                                        reference_logps=completion_logprobs(self.load_model(0), samples, pad),
                                        seed=self.config.seed)}
        # The card first: eval.json is the step's completion marker.
        add_evaluation_to_card(self.run_dir.model(k), comparison_table([result], "round", "round", baseline="M0")
                               + f"\n\nHeld-out prompts: {result['n_prompts']} from `{self.config.eval_prompts}`.")
        write_json(round_dir / rundir.EVAL, result)
        return result

    def run(self) -> list[dict]:
        from tqdm.auto import tqdm

        c = self.config
        self.check_state()
        evaluations = []
        started = time.time()
        for k in range(1, c.rounds + 1):
            round_dir = self.run_dir.round(k)
            round_dir.mkdir(parents=True, exist_ok=True)
            steps = [
                (rundir.SAMPLES, lambda: self.sample(k - 1, self.round_prompt_list(k), round_dir / rundir.SAMPLES)),
                (rundir.SCORES, lambda: self.score(self.prompts(), self.run_dir.samples(round_dir / rundir.SAMPLES),
                                                   round_dir / rundir.SCORES)),
                (rundir.PAIRS, lambda: self.pair(self.run_dir.samples(round_dir / rundir.SAMPLES),
                                                 self.run_dir.scores(round_dir / rundir.SCORES), round_dir)),
                (rundir.MODEL, lambda: self.train(k, read_jsonl(round_dir / rundir.PAIRS), round_dir)),
            ]
            if c.eval_prompts and (k % c.eval_every == 0 or k == c.rounds):
                steps.append((rundir.EVAL, lambda: self.evaluate(k, round_dir)))
            for name, step in tqdm(steps, desc=f"round {k}/{c.rounds}", leave=False):
                if (round_dir / name).exists():
                    continue
                t0 = time.time()
                step()
                self.finish_step(k, name, time.time() - t0)
                logger.info("round %d: %s (%.1fs since this run started)", k, name, time.time() - started)
            evaluation = self.run_dir.evaluation(k)
            if evaluation is not None:
                evaluations.append(evaluation)
        state = self.run_dir.state()
        state["finished_rounds"] = c.rounds
        write_json(self.run_dir.state_path, state)
        return evaluations


def evaluation_table(evaluations: list[dict]) -> str:
    from .evaluate import comparison_table

    return comparison_table(evaluations, "round", "round", baseline="M0")


# ----- configuration ---------------------------------------------------------------------------------------

SECTIONS = ("reward", "eval_reward", "sampling", "train")

ITERATE_HELP = """sections (YAML mappings; dotted flags reach their keys, e.g. --train.learning_rate 1e-5):
  reward, eval_reward   a reward source: {type: callable, function: "module:fn", kwargs: {...}}
                        | {type: model, path: DIR, input: completion|prompt+completion, max_length: N}
                        | {type: judge, base_url: URL, model: NAME, api_key_env: VAR}
  sampling              n, max_new_tokens, temperature, top_p, top_k, seed, batch_size
  train                 any `cringe train` training flag (CringeConfig: learning_rate, num_train_epochs,
                        per_device_train_batch_size, beta, alpha, margin, ...) and LoRA (use_peft, lora_r, ...)

Rerun the same command to resume an interrupted run."""


def _section_parser(name: str):
    from .config import make_parser

    if name == "train":
        from .trainer import CringeConfig, LoraArguments

        return make_parser((CringeConfig, LoraArguments), prog="train")
    if name == "sampling":
        from .generation import SamplingConfig

        return make_parser(SamplingConfig, prog="sampling")
    return None  # reward sources: free-form, checked by cringe.rewards.load_reward_source


def iterate_parser():
    from .config import flat_dataclass, make_parser

    return make_parser(flat_dataclass(IterateConfig, set(SECTIONS)), prog="cringe iterate",
                       description="Iterative preference training: sample -> score -> pair -> train -> evaluate, "
                                   "round after round (resumable).", epilog=ITERATE_HELP)


def parse_iterate_args(argv: list[str]) -> IterateConfig:
    """An IterateConfig from `--config FILE` plus flags; every key typed and checked before any work."""
    from .config import (free_form, merge_section, parse, pop_config_flag, read_yaml, split_dotted,
                         typed_section)

    config_path, argv = pop_config_flag(argv)
    values = read_yaml(config_path) if config_path else {}
    source = config_path or "config"
    sections = {name: values.pop(name) for name in SECTIONS if name in values}
    argv, dotted = split_dotted(argv, set(SECTIONS))
    parser = iterate_parser()
    (flags,) = parse(parser, argv, 1, file_values=values, source=source)
    merged = {}
    for name in SECTIONS:
        given = sections.get(name)
        if given is not None and not isinstance(given, dict):
            raise UserError(f"{source}: {name} must be a mapping, got {type(given).__name__}")
        if given is None and name not in dotted:
            continue
        value = merge_section(given or {}, dotted.get(name, {}))
        section_parser = _section_parser(name)
        merged[name] = (typed_section(section_parser, value, f"{source}: {name}") if section_parser
                        else free_form(value))
    return IterateConfig(**dataclasses.asdict(flags), **merged)


def load_config(path: str | None, overrides: list[str]) -> IterateConfig:
    """YAML file plus `--key value` overrides (dotted keys reach sections: `--train.learning_rate 1e-5`)."""
    return parse_iterate_args((["--config", str(path)] if path else []) + list(overrides))
