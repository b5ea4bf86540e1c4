"""`cringe demo`: the paper's comparison reproduced offline on a CPU (docs/design.md, "The embedded default").

The policy (SmolLM2-135M-Instruct) continues the opening words of movie reviews; the goal is a positive
continuation. Every method starts from the same policy (the "SFT" row) and gets the same budget of labelled
samples: N=4 samples for each of R*m training prompts, labelled by the proxy reward model (MiniLM).
    DPO, binary Cringe, Pairwise Cringe     one round over all R*m prompts (the same M0 samples for all three)
    Iterative DPO, Iterative Pairwise Cringe R rounds of m fresh prompts; round 1 reuses those M0 samples
The table is scored by the gold judge (TF-IDF + logistic regression fitted on a disjoint split) on held-out
prompts: win rate against the SFT policy per prompt with a bootstrap 95% interval, gold and proxy reward,
Monte-Carlo KL to the start, length and repetition.

Everything lands in --output-dir: data/, m0/ (the shared M0 samples), methods/<name>/ (an `cringe iterate` run
directory each, resumable), results.json, report.md, report.html and the PNG plots. Running the same command
again resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cringe.demo import methods
from cringe.demo.online import OnlineSettings, run_online
from cringe.durable.files import read_json, read_jsonl, write_json, write_jsonl
from cringe.errors import UserError
from cringe.evaluate import mean_with_ci, summarise
from cringe.loop import rundir
from cringe.loop.run import IterativeRun
from cringe.loop.rundir import RunDir
from cringe.loop.stages import per_sample
from cringe.losses import PairwiseCringeSettings
from cringe.machine import machine_description  # bench/ scripts import it from here too
from cringe.models import cpu_prefers_bf16, resolve_path
from cringe.registry import LOSSES, loss_spec
from cringe.report import write_report
from cringe.rewards import load_reward_source
from cringe.testbeds import sentiment
from cringe.testbeds.sentiment import SplitSizes

logger = logging.getLogger("cringe.demo")

# name -> (loss, iterative?)
METHODS = {
    "dpo": ("dpo", False),
    "binary_cringe": ("binary_cringe", False),
    "pairwise_cringe": ("pairwise_cringe", False),
    "iterative_dpo": ("dpo", True),
    "iterative_pairwise_cringe": ("pairwise_cringe", True),
    "rloo": ("rloo", False),  # TRL's RLOOTrainer on the proxy reward: opt-in (--methods ...,rloo), docs/results/ppo.md
    # Rejection-sampling fine-tuning (RAFT / ReST): Iterative Pairwise Cringe without the loser; opt-in
    "iterative_sft": ("sft", True),
}
OPT_IN = ("rloo", "iterative_sft")
PRESET_FILE = "preset.json"  # the preset (less its methods) and seed an output directory was made with
LABELS = {
    "sft": "SFT (start, baseline)",
    "dpo": "DPO",
    "binary_cringe": "Binary Cringe",
    "pairwise_cringe": "Pairwise Cringe",
    "iterative_dpo": "Iterative DPO",
    "iterative_pairwise_cringe": "Iterative Pairwise Cringe",
    "rloo": "RLOO (TRL, PPO family)",
    "iterative_sft": "Iterative SFT on the best sample",
}


@dataclass(frozen=True)
class Preset:
    policy: str = "smollm2-135m-instruct"
    rounds: int = 3  # iterative methods; the one-round methods see rounds * round_prompts prompts at once
    round_prompts: int = 32
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    eval_prompts: int = 128  # intervals of about +/-0.08 on a win rate (64 gave about +/-0.11)
    eval_every: int = 1
    epochs: float = 1.0
    learning_rate: float = 1e-4
    pairs_per_step: int = 8
    beta: float = 0.1  # DPO
    # bf16 autocast over fp32 weights, and bf16 sampling, where the CPU computes bf16 natively (AMX/AVX512-BF16:
    # 0.65x the fp32 step and 2x the fp32 sampling rate, bench/results/*-demo-shape.md); None: as the CPU allows
    # (torch emulates bf16 on other CPUs, slower than fp32: cringe.models.cpu_prefers_bf16).
    bf16: bool | None = None
    sampling_dtype: str | None = "auto"  # auto: bfloat16 where the CPU prefers it, else the policy's dtype
    sampling_batch: int = 64
    proxy_epochs: float = 1.0
    # The proxy reads the last proxy_max_length tokens of a text (reviews state their verdict at the end; the
    # policy's continuations are shorter than this anyway).
    proxy_max_length: int = 64
    proxy_learning_rate: float = 1e-4
    # None: the whole proxy is fine-tuned; N: its top N layers, pooler and head only (sentiment.train_top_layers).
    # None is also what a preset.json from before this field reads as, so those directories still resume.
    proxy_trained_layers: int | None = None
    rloo_beta: float = 0.05  # RLOO's KL penalty to the start (TRL's default); 0 loads no reference model
    sizes: SplitSizes = field(default_factory=SplitSizes)
    methods: tuple[str, ...] = tuple(m for m in METHODS if m not in OPT_IN)

    def resolved_bf16(self) -> bool:
        return cpu_prefers_bf16() if self.bf16 is None else self.bf16

    def resolved_sampling_dtype(self) -> str | None:
        # Resolved here rather than left to the loop's own CPU rule: the run's config records the value, and demo
        # runs written before (bfloat16) keep resuming on the CPUs that prefer it.
        if self.sampling_dtype == "auto":
            return "bfloat16" if cpu_prefers_bf16() else None
        return self.sampling_dtype


PRESETS = {
    "default": Preset(),
    # The iterative comparison only (start model, DPO, Iterative DPO, Iterative Pairwise Cringe): with Binary Cringe
    # and one-round Pairwise Cringe too it took 307-362 s cold on 2 cores. Aims, on 3 seeds from an empty cache:
    # <= 300 s, proxy accuracy >= 0.75, Iterative Pairwise Cringe's interval above 0.5; how each setting below was
    # chosen, and every cold run, are in docs/results/demo.md ("The quick preset") and
    # bench/results/quick_cold-2026-12-03-xeon.md. In short:
    # - the proxy trains MiniLM's top 2 layers, pooler and head on the lower layers' output computed once
    #   (sentiment.train_top_layers): 36 s instead of ~100 s for the whole model, 0.774-0.792 over seeds 0-2, and no
    #   dropout to make runs of one seed differ; scored on 1,000 reviews (standard error 0.013 against 0.75);
    # - 4 rounds of 8 prompts at lr 3e-4 (at 1e-4, 2-3 steps a round barely move the policy): with 3 rounds seed 0's
    #   Iterative Pairwise Cringe interval low was exactly 0.500, since it moves less per round than Iterative DPO;
    # - 96 evaluation prompts, paid for by the proxy's saved time: the interval 30% narrower than at 48.
    "quick": Preset(
        rounds=4,
        round_prompts=8,
        max_new_tokens=16,
        eval_prompts=96,
        eval_every=4,  # the last round only: each evaluation costs as much as a round's training
        learning_rate=3e-4,
        pairs_per_step=4,  # two steps a round from 8 prompts, as 12 prompts at 8 pairs a step gave (8 + 4)
        proxy_max_length=48,
        proxy_epochs=2,
        proxy_learning_rate=1e-3,
        proxy_trained_layers=2,
        sizes=SplitSizes(proxy_train=2400, gold_train=5000, classifier_test=1000),
        methods=("dpo", "iterative_dpo", "iterative_pairwise_cringe"),
    ),
    # what `make test` runs: the whole pipeline on a tiny random policy, in seconds
    "smoke": Preset(
        policy="tiny-random-llama",
        rounds=2,
        round_prompts=4,
        max_new_tokens=6,
        eval_prompts=6,
        learning_rate=1e-3,
        pairs_per_step=2,
        bf16=False,
        sampling_dtype=None,
        sampling_batch=16,
        rloo_beta=0.0,
        proxy_epochs=0.5,
        sizes=SplitSizes(proxy_train=32, gold_train=300, classifier_test=50, train_prompts=8, eval_prompts=6),
    ),
}


class Progress:
    """Stage log with elapsed and estimated remaining time: the estimates are relative costs, scaled by how
    long the finished stages actually took."""

    def __init__(self):
        self.started = time.time()
        self.estimates: dict[str, float] = {}
        self.done_estimate = 0.0
        self.done_seconds = 0.0
        # What each stage took in this call. Round steps an earlier call finished are absent; set-up and M0 are
        # always listed (near 0 s when cached). Scoring and pairing are not stages here (under a second each).
        self.seconds: dict[str, float] = {}

    def plan(self, name: str, estimate: float) -> None:
        self.estimates[name] = estimate

    def finish(self, name: str, seconds: float, skipped: bool = False, note: str = "", calibrate: bool = True) -> None:
        """calibrate=False: the stage's time says nothing about the rest (set-up, often a cache hit)."""
        estimate = self.estimates.pop(name, 0.0)
        if not skipped and calibrate:
            self.done_estimate += estimate
            self.done_seconds += seconds
        scale = self.done_seconds / self.done_estimate if self.done_estimate > 0 else 1.0
        remaining = scale * sum(self.estimates.values())
        elapsed = time.time() - self.started
        if skipped:
            return
        self.seconds[name] = round(seconds, 1)
        logger.info(
            "[%s] %s%s in %.0fs | elapsed %s, about %s remaining",
            time.strftime("%H:%M:%S"),
            name,
            f" ({note})" if note else "",
            seconds,
            format_duration(elapsed),
            format_duration(remaining),
        )


def format_duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _tokens_per_second() -> float:
    return 250.0  # SmolLM2 bf16 sampling at batch 64 on this CPU (bench/results/generation-*.md): only the ETA's scale


class Demo:
    def __init__(self, preset: Preset, output_dir: str, seed: int = 0):
        self.preset, self.out, self.seed = preset, Path(output_dir), seed
        self.progress = Progress()
        self.method_steps: dict[str, list[tuple[int, str]]] = {}  # planned (round, step file) of each method

    # ----- stage 1: data, judges, policy -------------------------------------------------------------------
    def assets(self) -> dict:
        p = self.preset
        t0 = time.time()
        splits = sentiment.make_splits(self.seed, p.sizes)
        n_train = p.rounds * p.round_prompts
        if n_train > len(splits["train_prompts"]) or p.eval_prompts > len(splits["eval_prompts"]):
            raise ValueError(
                f"preset needs {n_train} training and {p.eval_prompts} evaluation prompts; the splits "
                f"hold {len(splits['train_prompts'])} and {len(splits['eval_prompts'])}"
            )
        data = self.out / "data"
        self.train_file = sentiment.write_prompt_file(splits["train_prompts"][:n_train], data / "train_prompts.jsonl")
        self.eval_file = sentiment.write_prompt_file(
            splits["eval_prompts"][: p.eval_prompts], data / "eval_prompts.jsonl"
        )
        self.progress.finish("data splits and prompt files", time.time() - t0, calibrate=False)
        t0 = time.time()
        self.gold_dir, gold = sentiment.build_gold_judge(splits, seed=self.seed, sizes=p.sizes)
        self.progress.finish(
            "gold judge",
            time.time() - t0,
            note=f"TF-IDF + logistic regression, held-out accuracy {gold['accuracy']:.3f}",
            calibrate=False,
        )
        t0 = time.time()
        self.proxy_dir, proxy = sentiment.build_proxy_reward_model(
            splits,
            seed=self.seed,
            sizes=p.sizes,
            epochs=p.proxy_epochs,
            max_length=p.proxy_max_length,
            learning_rate=p.proxy_learning_rate,
            trained_layers=p.proxy_trained_layers,
        )
        self.progress.finish(
            "proxy reward model",
            time.time() - t0,
            note=f"MiniLM, held-out accuracy {proxy['accuracy']:.3f}",
            calibrate=False,
        )
        t0 = time.time()
        resolve_path(p.policy)  # converts the packaged GGUF once; cached afterwards
        self.progress.finish("policy", time.time() - t0, note=p.policy, calibrate=False)
        return {"gold_judge": gold, "proxy_reward_model": proxy}

    def base_config(self) -> dict:
        p = self.preset
        return dict(
            model=p.policy,
            prompts=str(self.train_file),
            eval_prompts=str(self.eval_file),
            reward={
                "type": "model",
                "path": str(self.proxy_dir),
                "input": "completion",
                "max_length": p.proxy_max_length,
            },
            eval_reward={
                "type": "callable",
                "function": "cringe.testbeds.sentiment:gold_reward",
                "kwargs": {"judge_dir": str(self.gold_dir)},
            },
            sampling={"n": p.samples_per_prompt, "max_new_tokens": p.max_new_tokens, "batch_size": p.sampling_batch},
            sampling_dtype=p.resolved_sampling_dtype(),
            eval_every=p.eval_every,
            seed=self.seed,
            backend="transformers",
        )

    def training(self) -> methods.Training:
        p = self.preset
        return methods.Training(p.learning_rate, p.pairs_per_step, p.epochs, p.beta, p.resolved_bf16())

    # ----- stage 2: the shared M0 samples -------------------------------------------------------------------
    def m0(self):
        """M_0's samples on every training prompt, proxy-scored, and on the held-out prompts, gold-scored: drawn
        once in m0/ (samples.jsonl and scores.jsonl at its top, as `cringe sample`/`cringe score` write them);
        every method's round 1 trains on its rows (first_round_from) and compares with its baseline."""

        p = self.preset
        return methods.draw_m0(
            self.base_config(),
            self.out / "m0",
            on_samples=lambda seconds, _: self.progress.finish(
                "M0 samples",
                seconds,
                note=f"{p.samples_per_prompt} x {p.rounds * p.round_prompts} training prompts, proxy-labelled",
            ),
            on_held_out=lambda seconds: self.progress.finish(
                "M0 held-out", seconds, note=f"{p.eval_prompts} prompts, gold-scored"
            ),
        )

    # ----- stage 3: the methods -----------------------------------------------------------------------------
    def method_config(self, name: str):
        p = self.preset
        loss, iterative = METHODS[name]
        if loss == "rloo":  # trained by TRL; the run directory is used for sampling and evaluation only
            loss = "pairwise_cringe"
        return methods.method_config(
            self.base_config(),
            self.out / "methods" / name,
            loss=loss,
            iterative=iterative,
            rounds=p.rounds,
            round_prompts=p.round_prompts,
            training=self.training(),
            m0_dir=self.out / "m0",
        )

    def plan(self) -> None:
        """Relative cost of every stage (seconds at this CPU's measured rates), for the remaining-time estimate."""
        p = self.preset
        rate = _tokens_per_second()
        seq_tokens = 45 + p.max_new_tokens  # chat template + system message + review opening ~ 45 tokens
        train_rate = 160.0  # training tokens/s (SmolLM2, chunked loss, bf16 autocast, 8 pairs per step, this CPU)
        self.progress.plan("data splits and prompt files", 2)
        self.progress.plan("gold judge", 25)
        self.progress.plan("proxy reward model", 90)
        self.progress.plan("policy", 20)
        n_train = p.rounds * p.round_prompts
        self.progress.plan("M0 samples", n_train * p.samples_per_prompt * p.max_new_tokens / rate)
        eval_cost = p.eval_prompts * p.max_new_tokens / rate + p.eval_prompts * seq_tokens * 2 / (3 * train_rate)
        self.progress.plan("M0 held-out", eval_cost)
        for name in p.methods:
            loss, iterative = METHODS[name]
            rounds, prompts = (p.rounds, p.round_prompts) if iterative else (1, n_train)
            kind = "binary" if loss == "rloo" else loss_spec(loss).data_kind
            seqs = prompts * {"binary": p.samples_per_prompt, "pairwise": 2, "sft": 1}[kind]
            for k in range(1, rounds + 1):
                if k > 1:
                    self.plan_step(name, k, rundir.SAMPLES, prompts * p.samples_per_prompt * p.max_new_tokens / rate)
                train = (
                    seqs
                    * seq_tokens
                    * p.epochs
                    / train_rate
                    * (1.3 if loss in LOSSES and loss_spec(loss).needs_reference else 1.0)
                )
                if loss == "rloo":  # its own fp32 sampling, and a reference pass when beta > 0
                    train = train * (1.5 if p.rloo_beta else 1.2) + seqs * p.max_new_tokens / (rate / 2)
                self.plan_step(name, k, rundir.MODEL, train)
                if k % p.eval_every == 0 or k == rounds:
                    self.plan_step(name, k, rundir.EVAL, eval_cost)

    @staticmethod
    def _step_key(name: str, k: int, step: str) -> str:
        return f"{name} round {k}: {step}"

    def plan_step(self, name: str, k: int, step: str, estimate: float) -> None:
        self.progress.plan(self._step_key(name, k, step), estimate)
        self.method_steps.setdefault(name, []).append((k, step))

    def run_methods(self, m0) -> None:
        for name in self.preset.methods:
            config = self.method_config(name)
            run = IterativeRun(config, on_step=lambda k, step, s, name=name: self._step_done(name, k, step, s))
            if name == "rloo":
                p = self.preset
                n = p.samples_per_prompt
                run_online(
                    run,
                    "rloo",
                    OnlineSettings(
                        num_generations=n,
                        max_completion_length=p.max_new_tokens,
                        epochs=p.epochs,
                        bf16=p.resolved_bf16(),
                        seed=self.seed,
                        # the demo's other methods' optimiser settings and sampling, so that only the method differs
                        overrides=dict(
                            learning_rate=p.learning_rate,
                            lr_scheduler_type="constant",
                            per_device_train_batch_size=p.pairs_per_step * 2 // n * n or n,
                            temperature=1.0,
                            top_p=1.0,
                            top_k=0,
                            beta=p.rloo_beta,
                            logging_steps=5,
                            disable_dropout=True,
                        ),
                    ),
                )
                continue
            for k, step in self.method_steps.get(name, []):  # finished on an earlier run of this command
                if run.run_dir.file(k, step).exists():
                    self.progress.finish(self._step_key(name, k, step), 0.0, skipped=True)
            logger.info("method %s: loss %s, %d round(s)", name, config.loss, config.rounds)
            run.run()

    def _step_done(self, name: str, k: int, step: str, seconds: float) -> None:
        key = self._step_key(name, k, step)
        if key in self.progress.estimates:
            self.progress.finish(key, seconds)

    # ----- stage 4: collect and report ----------------------------------------------------------------------
    def proxy_scores(self, samples_path: Path, scores_path: Path) -> list[float]:
        """Proxy-reward scores of held-out samples (gold scored them for the comparison), cached beside them."""

        if not scores_path.exists():
            samples = RunDir.samples(samples_path)
            if not hasattr(self, "_proxy"):
                self._proxy = load_reward_source(self.base_config()["reward"], device="auto")
            scores = self._proxy.score([""] * len(samples), [s.completion for s in samples])
            write_jsonl(scores_path, per_sample(scores, samples))
        return RunDir.scores(scores_path, samples=samples_path)

    def collect(self, m0) -> dict:
        """One row per method (its last evaluated round) and every evaluated round: the loop's comparison
        (cringe.evaluate.compare's schema, gold-scored) plus the proxy reward and the labelling budget."""

        start = m0.run_dir
        base = summarise(start.samples(start.baseline_samples), start.scores(start.baseline_scores), seed=self.seed)
        base_proxy = self.proxy_scores(start.baseline_samples, start.path / rundir.BASELINE_PROXY_SCORES)
        rows = [
            {
                "method": "sft",
                "label": LABELS["sft"],
                "round": 0,
                "win_rate": None,
                "reward": base["reward"],
                "text": base["text"],
                "kl": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0},
                "proxy_reward": mean_with_ci(base_proxy, seed=self.seed),
                "labelled_samples": 0,
                "train_seconds": 0.0,
            }
        ]
        curves = {}
        for name in self.preset.methods:
            run = RunDir(self.out / "methods" / name)
            config = run.config()
            curve = []
            for k in run.evaluated_rounds():
                comparison = run.evaluation(k)
                proxy = self.proxy_scores(run.file(k, rundir.EVAL_SAMPLES), run.file(k, rundir.EVAL_PROXY_SCORES))
                if name == "rloo":  # sampled and labelled inside TRL's loop: each prompt once, N samples each
                    n_prompts = len(read_jsonl(Path(config["prompts"])))
                    labelled, kept = n_prompts * self.preset.samples_per_prompt, n_prompts
                else:
                    labelled, kept = run.labelled_samples(k), run.rows_kept(k)
                curve.append(
                    {
                        "method": name,
                        "label": LABELS[name],
                        **comparison,
                        "proxy_reward": mean_with_ci(proxy, seed=self.seed),
                        "labelled_samples": labelled,
                        "training_rows": kept,
                        "train_seconds": run.seconds(rundir.MODEL, k),
                    }
                )
            curves[name] = curve
            if curve:
                rows.append(curve[-1])
        return {"rows": rows, "curves": curves, "examples": self.examples(m0)}

    def examples(self, m0, prompts: int = 3) -> list[dict]:
        """The first held-out prompts: one completion of the start model and of each method's last evaluated
        round, with gold and proxy scores (for the report)."""

        def first_per_prompt(run, samples_path, gold_path, proxy_path):
            samples, gold = run.samples(samples_path), run.scores(gold_path)
            proxy = self.proxy_scores(samples_path, proxy_path)
            out = {}
            for s, g, p in zip(samples, gold, proxy):
                out.setdefault(s.prompt_id, (s, g, p))
            return out

        start = m0.run_dir
        base = first_per_prompt(
            start, start.baseline_samples, start.baseline_scores, start.path / rundir.BASELINE_PROXY_SCORES
        )
        ids = sorted(base)[:prompts]
        sides = [(LABELS["sft"], base)]
        for name in self.preset.methods:
            run = RunDir(self.out / "methods" / name)
            rounds = run.evaluated_rounds()
            if rounds:
                k = rounds[-1]
                sides.append(
                    (
                        LABELS[name],
                        first_per_prompt(
                            run,
                            run.file(k, rundir.EVAL_SAMPLES),
                            run.file(k, rundir.EVAL_SCORES),
                            run.file(k, rundir.EVAL_PROXY_SCORES),
                        ),
                    )
                )
        return [
            {
                "prompt": base[i][0].prompt or f"(held-out prompt {i})",
                "rows": [
                    {"label": label, "completion": side[i][0].completion, "gold": side[i][1], "proxy": side[i][2]}
                    for label, side in sides
                    if i in side
                ],
            }
            for i in ids
        ]

    # ----- one preset per output directory -------------------------------------------------------------------
    def recorded_preset(self) -> dict:
        """What decides the directory's contents: the preset less its methods (a finished run may gain a method)."""
        recorded = {**dataclasses.asdict(self.preset), "seed": self.seed}
        del recorded["methods"]
        return json.loads(json.dumps(recorded))  # as read back (tuples become lists)

    def check_preset(self) -> None:
        """Refuse a directory another preset made, before its prompt files are rewritten: the loop checks each
        run's config but not how many prompts its files hold, so rounds would mix. A directory from before
        preset.json existed is checked by its prompt files' lengths, then by the loop."""
        path = self.out / PRESET_FILE
        if path.exists():
            saved, now = read_json(path), self.recorded_preset()
            diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        elif RunDir(self.out / "m0").state_path.exists():
            p = self.preset
            expected = {"train_prompts": p.rounds * p.round_prompts, "eval_prompts": p.eval_prompts}
            diff = [
                f"{name} ({len(read_jsonl(self.out / 'data' / f'{name}.jsonl'))} prompts, this preset {n})"
                for name, n in expected.items()
                if (self.out / "data" / f"{name}.jsonl").exists()
                and len(read_jsonl(self.out / "data" / f"{name}.jsonl")) != n
            ]
            # the old quick preset had this preset's prompt counts: its proxy read 40 tokens and it ran 2 rounds
            m0_reward = read_json(RunDir(self.out / "m0").state_path).get("config", {}).get("reward", {})
            if m0_reward.get("max_length", p.proxy_max_length) != p.proxy_max_length:
                diff.append(f"proxy_max_length ({m0_reward['max_length']}, this preset {p.proxy_max_length})")
            for name in p.methods:
                run = RunDir(self.out / "methods" / name)
                rounds = read_json(run.state_path).get("config", {}).get("rounds") if run.exists() else None
                if METHODS[name][1] and rounds not in (None, p.rounds):
                    diff.append(f"{name} rounds ({rounds}, this preset {p.rounds})")
        else:
            return
        if diff:
            raise UserError(
                f"{self.out} holds a demo run made with another preset or seed (differences: {', '.join(diff)}); "
                "use another --output-dir, or delete that one"
            )

    def run(self, command: str) -> dict:
        started = time.time()
        self.check_preset()
        self.out.mkdir(parents=True, exist_ok=True)
        self.plan()
        accuracies = self.assets()
        m0 = self.m0()  # the loop accepted the directory's M0 run: this preset's from now on
        if not (self.out / PRESET_FILE).exists():
            write_json(self.out / PRESET_FILE, self.recorded_preset())
        self.run_methods(m0)
        t0 = time.time()
        results = self.collect(m0)
        p = self.preset
        results["meta"] = {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine_description(),
            "preset": {
                **dataclasses.asdict(p),
                "bf16": p.resolved_bf16(),  # as this machine ran it
                "sampling_dtype": p.resolved_sampling_dtype() or "float32",
            },
            "seed": self.seed,
            "wall_seconds": round(time.time() - started, 1),
            "stage_seconds": dict(self.progress.seconds),
            "reward_models": accuracies,
            "pairwise_cringe": pairwise_cringe_settings(),
        }
        write_report(results, self.out)
        self.progress.finish("report", time.time() - t0)
        return results


def pairwise_cringe_settings() -> dict:
    """The library defaults every Pairwise Cringe method of the demo trains with (the report quotes them)."""
    settings = dataclasses.asdict(PairwiseCringeSettings())
    return {k: settings[k] for k in ("alpha", "k", "margin", "temperature", "margin_on", "detach_gate")}
