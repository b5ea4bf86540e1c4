"""`cringe demo`: the paper's comparison reproduced offline on a CPU (DESIGN §4).

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

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .testbeds.sentiment import SplitSizes

logger = logging.getLogger("cringe.demo")

# name -> (loss, iterative?)
METHODS = {
    "dpo": ("dpo", False),
    "binary_cringe": ("binary_cringe", False),
    "pairwise_cringe": ("pairwise_cringe", False),
    "iterative_dpo": ("dpo", True),
    "iterative_pairwise_cringe": ("pairwise_cringe", True),
    "rloo": ("rloo", False),  # TRL's RLOOTrainer on the proxy reward: opt-in (--methods ...,rloo), see README
}
LABELS = {"sft": "SFT (start, baseline)", "dpo": "DPO", "binary_cringe": "Binary Cringe",
          "pairwise_cringe": "Pairwise Cringe", "iterative_dpo": "Iterative DPO",
          "iterative_pairwise_cringe": "Iterative Pairwise Cringe", "rloo": "RLOO (TRL, PPO family)"}


@dataclass(frozen=True)
class Preset:
    policy: str = "smollm2-135m-instruct"
    rounds: int = 3  # iterative methods; the one-round methods see rounds * round_prompts prompts at once
    round_prompts: int = 32
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    eval_prompts: int = 64
    eval_every: int = 1
    epochs: float = 1.0
    learning_rate: float = 1e-4
    pairs_per_step: int = 8
    beta: float = 0.1  # DPO
    bf16: bool = True  # bf16 autocast, fp32 weights: 0.65x the fp32 step here (bench/results/*-demo-shape.md)
    sampling_dtype: str | None = "bfloat16"  # the fast sampling path on this CPU (2x fp32)
    sampling_batch: int = 64
    proxy_epochs: float = 1.0
    rloo_beta: float = 0.05  # RLOO's KL penalty to the start (TRL's default); 0 loads no reference model
    sizes: SplitSizes = field(default_factory=SplitSizes)
    methods: tuple[str, ...] = tuple(m for m in METHODS if m != "rloo")


PRESETS = {
    "default": Preset(),
    # ~5 minutes from an empty cache: smaller classifiers (their set-up is most of the difference), 2 rounds
    "quick": Preset(rounds=2, round_prompts=12, max_new_tokens=16, eval_prompts=24, eval_every=2,
                    sizes=SplitSizes(proxy_train=600, gold_train=5000, classifier_test=500)),
    # what `make test` runs: the whole pipeline on a tiny random policy, in seconds
    "smoke": Preset(policy="tiny-random-llama", rounds=2, round_prompts=4, max_new_tokens=6, eval_prompts=6,
                    learning_rate=1e-3, pairs_per_step=2, bf16=False, sampling_dtype=None, sampling_batch=16, rloo_beta=0.0,
                    proxy_epochs=0.5, sizes=SplitSizes(proxy_train=32, gold_train=300, classifier_test=50,
                                                       train_prompts=8, eval_prompts=6)),
}


class Progress:
    """Stage log with elapsed and estimated remaining time: the estimates are relative costs, scaled by how
    long the finished stages actually took."""

    def __init__(self):
        self.started = time.time()
        self.estimates: dict[str, float] = {}
        self.done_estimate = 0.0
        self.done_seconds = 0.0

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
        logger.info("[%s] %s%s in %.0fs | elapsed %s, about %s remaining", time.strftime("%H:%M:%S"), name,
                    f" ({note})" if note else "", seconds, _fmt(elapsed), _fmt(remaining))


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _tokens_per_second() -> float:
    return 250.0  # SmolLM2 bf16 sampling at batch 64 on this CPU (bench/generation.py): only the ETA's scale


class Demo:
    def __init__(self, preset: Preset, output_dir: str, seed: int = 0):
        self.preset, self.out, self.seed = preset, Path(output_dir), seed
        self.progress = Progress()
        self.method_steps: dict[str, list[tuple[int, str]]] = {}  # planned (round, step file) of each method

    # ----- stage 1: data, judges, policy -------------------------------------------------------------------
    def assets(self) -> dict:
        from .models import resolve_path
        from .testbeds import sentiment

        p = self.preset
        t0 = time.time()
        splits = sentiment.make_splits(self.seed, p.sizes)
        n_train = p.rounds * p.round_prompts
        if n_train > len(splits["train_prompts"]) or p.eval_prompts > len(splits["eval_prompts"]):
            raise ValueError(f"preset needs {n_train} training and {p.eval_prompts} evaluation prompts; the splits "
                             f"hold {len(splits['train_prompts'])} and {len(splits['eval_prompts'])}")
        data = self.out / "data"
        self.train_file = sentiment.write_prompt_file(splits["train_prompts"][:n_train], data / "train_prompts.jsonl")
        self.eval_file = sentiment.write_prompt_file(splits["eval_prompts"][:p.eval_prompts], data / "eval_prompts.jsonl")
        self.progress.finish("data splits and prompt files", time.time() - t0, calibrate=False)
        t0 = time.time()
        self.gold_dir, gold = sentiment.build_gold_judge(splits, seed=self.seed, sizes=p.sizes)
        self.progress.finish("gold judge", time.time() - t0,
                             note=f"TF-IDF + logistic regression, held-out accuracy {gold['accuracy']:.3f}", calibrate=False)
        t0 = time.time()
        self.proxy_dir, proxy = sentiment.build_proxy_reward_model(splits, seed=self.seed, sizes=p.sizes,
                                                                   epochs=p.proxy_epochs)
        self.progress.finish("proxy reward model", time.time() - t0,
                             note=f"MiniLM, held-out accuracy {proxy['accuracy']:.3f}", calibrate=False)
        t0 = time.time()
        resolve_path(p.policy)  # converts the packaged GGUF once; cached afterwards
        self.progress.finish("policy", time.time() - t0, note=p.policy, calibrate=False)
        return {"gold_judge": gold, "proxy_reward_model": proxy}

    def base_config(self) -> dict:
        p = self.preset
        return dict(
            model=p.policy, prompts=str(self.train_file), eval_prompts=str(self.eval_file),
            reward={"type": "model", "path": str(self.proxy_dir), "input": "completion", "max_length": 64},
            eval_reward={"type": "callable", "function": "cringe.testbeds.sentiment:gold_reward",
                         "kwargs": {"judge_dir": str(self.gold_dir)}},
            sampling={"n": p.samples_per_prompt, "max_new_tokens": p.max_new_tokens, "batch_size": p.sampling_batch},
            sampling_dtype=p.sampling_dtype, eval_every=p.eval_every, seed=self.seed, backend="transformers",
        )

    def train_args(self, loss: str) -> dict:
        p = self.preset
        rows_per_pair = 1 if loss != "binary_cringe" else 2  # binary rows are single sequences
        args = {"per_device_train_batch_size": p.pairs_per_step * rows_per_pair, "learning_rate": p.learning_rate,
                "num_train_epochs": p.epochs, "lr_scheduler_type": "constant", "warmup_steps": 0,
                "logging_steps": 5, "save_strategy": "no", "use_cpu": True, "bf16": p.bf16}
        if loss == "dpo":
            args.update(beta=p.beta, precompute_ref_logps=True)
        return args

    # ----- stage 2: the shared M0 samples -------------------------------------------------------------------
    def m0(self):
        from .loop import IterateConfig, IterativeRun

        p = self.preset
        run = IterativeRun(IterateConfig(**self.base_config(), output_dir=str(self.out / "m0"), rounds=1))
        run.check_state()
        samples_path, scores_path = run.dir / "samples.jsonl", run.dir / "scores.jsonl"
        t0 = time.time()
        prompts = run.prompts()
        if not samples_path.exists():
            run.sample(0, prompts, samples_path)
        if not scores_path.exists():
            run.score(prompts, run._samples(run.dir), scores_path)
        self.progress.finish("M0 samples", time.time() - t0,
                             note=f"{p.samples_per_prompt} x {p.rounds * p.round_prompts} training prompts, proxy-labelled")
        t0 = time.time()
        run.baseline()
        self.progress.finish("M0 held-out", time.time() - t0, note=f"{p.eval_prompts} prompts, gold-scored")
        return run

    # ----- stage 3: the methods -----------------------------------------------------------------------------
    def method_config(self, name: str):
        from .loop import IterateConfig

        p = self.preset
        loss, iterative = METHODS[name]
        if loss == "rloo":  # trained by TRL; the run directory is used for sampling and evaluation only
            loss = "pairwise_cringe"
        return IterateConfig(**self.base_config(), output_dir=str(self.out / "methods" / name), loss=loss,
                             rounds=p.rounds if iterative else 1, round_prompts=p.round_prompts if iterative else None,
                             train=self.train_args(loss))

    def copy_baseline(self, run) -> None:
        """M0's held-out samples and gold scores: sampled once, every method is compared with them."""
        run.dir.mkdir(parents=True, exist_ok=True)
        for name in ("baseline_samples.jsonl", "baseline_scores.jsonl"):
            if not (run.dir / name).exists():
                shutil.copyfile(self.out / "m0" / name, run.dir / name)

    def seed_from_m0(self, run, m0, baseline: bool = True) -> None:
        """Round 1 of every method labels the same M0 samples (fair, and sampled once): copy them in, and M0's
        held-out samples unless the run evaluates on other prompts (baseline=False)."""
        from .loop import read_jsonl, write_jsonl

        if baseline:
            self.copy_baseline(run)
        round1 = run.dir / "round-1"
        round1.mkdir(exist_ok=True)
        ids = {q.prompt_id for q in run.round_prompt_list(1)}
        for name in ("samples.jsonl", "scores.jsonl"):
            if not (round1 / name).exists():
                write_jsonl(round1 / name, [r for r in read_jsonl(m0.dir / name) if r["prompt_id"] in ids])

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
            seqs = prompts * (p.samples_per_prompt if loss in ("binary_cringe", "rloo") else 2)
            for k in range(1, rounds + 1):
                if k > 1:
                    self.plan_step(name, k, "samples.jsonl", prompts * p.samples_per_prompt * p.max_new_tokens / rate)
                train = seqs * seq_tokens * p.epochs / train_rate * (1.3 if loss == "dpo" else 1.0)
                if loss == "rloo":  # its own fp32 sampling, and a reference pass when beta > 0
                    train = train * (1.5 if p.rloo_beta else 1.2) + seqs * p.max_new_tokens / (rate / 2)
                self.plan_step(name, k, "model", train)
                if k % p.eval_every == 0 or k == rounds:
                    self.plan_step(name, k, "eval.json", eval_cost)

    @staticmethod
    def _step_key(name: str, k: int, step: str) -> str:
        return f"{name} round {k}: {step}"

    def plan_step(self, name: str, k: int, step: str, estimate: float) -> None:
        self.progress.plan(self._step_key(name, k, step), estimate)
        self.method_steps.setdefault(name, []).append((k, step))

    def run_methods(self, m0) -> None:
        from .loop import IterativeRun

        for name in self.preset.methods:
            config = self.method_config(name)
            run = IterativeRun(config, on_step=lambda k, step, s, name=name: self._step_done(name, k, step, s))
            if name == "rloo":
                self.run_rloo(run)
                continue
            self.seed_from_m0(run, m0)
            for k, step in self.method_steps.get(name, []):  # finished on an earlier run of this command
                if (run.dir / f"round-{k}" / step).exists():
                    self.progress.finish(self._step_key(name, k, step), 0.0, skipped=True)
            logger.info("method %s: loss %s, %d round(s)", name, config.loss, config.rounds)
            run.run()

    def run_rloo(self, run) -> None:
        """The paper's PPO row, as TRL's RLOO (a PPO-family method: on-policy samples, leave-one-out baseline,
        KL penalty to the start) on the proxy reward, with the same labelled-sample budget: each training prompt
        once, samples_per_prompt samples each. TRL samples in the training dtype inside its loop."""
        from datasets import Dataset
        from trl import RLOOConfig, RLOOTrainer

        from .loop import publish_model, read_jsonl
        from .models import load_model, load_tokenizer
        from .rewards import load_reward_source

        p, c = self.preset, run.config
        run.check_state()
        self.copy_baseline(run)
        round_dir = run.dir / "round-1"
        round_dir.mkdir(parents=True, exist_ok=True)
        if not (round_dir / "model").exists():
            t0 = time.time()
            proxy = load_reward_source(c.reward)

            def proxy_reward(prompts, completions, **_):
                texts = [x[-1]["content"] if isinstance(x, list) else x for x in completions]
                return proxy.score([""] * len(texts), texts)

            tokenizer = load_tokenizer(c.model)
            model = load_model(c.model, tokenizer, "float32")
            n = p.samples_per_prompt
            args = RLOOConfig(
                output_dir=str(round_dir / "checkpoints"), learning_rate=p.learning_rate, lr_scheduler_type="constant",
                num_train_epochs=p.epochs, per_device_train_batch_size=p.pairs_per_step * 2 // n * n or n,
                num_generations=n, max_completion_length=p.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                beta=p.rloo_beta, bf16=p.bf16, use_cpu=True, report_to="none", save_strategy="no", logging_steps=5,
                seed=self.seed, disable_dropout=True)
            trainer = RLOOTrainer(model=model, reward_funcs=[proxy_reward], args=args, processing_class=tokenizer,
                                  train_dataset=Dataset.from_list(read_jsonl(Path(c.prompts))))
            trainer.train()
            publish_model(trainer, round_dir)
            run.finish_step(1, "model", time.time() - t0)
        if not (round_dir / "eval.json").exists():
            t0 = time.time()
            run.evaluate(1, round_dir)
            run.finish_step(1, "eval.json", time.time() - t0)

    def _step_done(self, name: str, k: int, step: str, seconds: float) -> None:
        key = self._step_key(name, k, step)
        if key in self.progress.estimates:
            self.progress.finish(key, seconds)

    # ----- stage 4: collect and report ----------------------------------------------------------------------
    def proxy_scores(self, run_dir: Path, samples_name: str, scores_name: str) -> list[float]:
        from .generation import Sample
        from .loop import read_jsonl, write_jsonl
        from .rewards import load_reward_source

        path = run_dir / scores_name
        if not path.exists():
            samples = [Sample.from_dict(d) for d in read_jsonl(run_dir / samples_name)]
            if not hasattr(self, "_proxy"):
                self._proxy = load_reward_source(self.base_config()["reward"])
            scores = self._proxy.score([""] * len(samples), [s.completion for s in samples])
            write_jsonl(path, [{"prompt_id": s.prompt_id, "sample_id": s.sample_id, "score": r}
                               for s, r in zip(samples, scores)])
        return [r["score"] for r in read_jsonl(path)]

    def collect(self, m0) -> dict:
        from .evaluate import mean_with_ci, text_metrics
        from .generation import Sample
        from .loop import read_jsonl

        base_samples = [Sample.from_dict(d) for d in read_jsonl(m0.dir / "baseline_samples.jsonl")]
        base_gold = [r["score"] for r in read_jsonl(m0.dir / "baseline_scores.jsonl")]
        base_proxy = self.proxy_scores(m0.dir, "baseline_samples.jsonl", "baseline_proxy_scores.jsonl")
        rows = [{"method": "sft", "label": LABELS["sft"], "round": 0, "win_rate": None,
                 "gold_reward": mean_with_ci(base_gold, seed=self.seed),
                 "proxy_reward": mean_with_ci(base_proxy, seed=self.seed), "kl": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0},
                 **text_metrics([s.completion for s in base_samples], [s.num_tokens for s in base_samples],
                                [s.finish_reason for s in base_samples]),
                 "labelled_samples": 0, "train_seconds": 0.0}]
        curves = {}
        for name in self.preset.methods:
            run_dir = self.out / "methods" / name
            state = json.loads((run_dir / "state.json").read_text())
            rounds = state["config"]["rounds"]
            curve = []
            for k in range(1, rounds + 1):
                round_dir = run_dir / f"round-{k}"
                if not (round_dir / "eval.json").exists():
                    continue
                e = json.loads((round_dir / "eval.json").read_text())
                proxy = self.proxy_scores(round_dir, "eval_samples.jsonl", "eval_proxy_scores.jsonl")
                if name == "rloo":  # sampled and labelled inside TRL's loop: each prompt once, N samples each
                    n_prompts = len(read_jsonl(Path(state["config"]["prompts"])))
                    labelled = n_prompts * self.preset.samples_per_prompt
                    pairs = [n_prompts]
                else:
                    labelled = sum(len(read_jsonl(run_dir / f"round-{j}" / "samples.jsonl")) for j in range(1, k + 1))
                    pairs = [json.loads((run_dir / f"round-{j}" / "pairing.json").read_text())["kept"]
                             for j in range(1, k + 1)]
                train_s = sum(s["seconds"] for s in state.get("steps", []) if s["step"] == "model" and s["round"] <= k)
                curve.append({"method": name, "label": LABELS[name], "round": k, "win_rate": e["win_rate_vs_initial"],
                              "gold_reward": e["reward"], "proxy_reward": mean_with_ci(proxy, seed=self.seed),
                              "kl": e["kl_to_initial"], **{m: e[m] for m in ("length_tokens", "truncated_rate",
                                                                              "distinct_1", "distinct_2",
                                                                              "repeated_3gram_rate")},
                              "labelled_samples": labelled, "training_rows": sum(pairs), "train_seconds": train_s})
            curves[name] = curve
            if curve:
                rows.append(curve[-1])
        return {"rows": rows, "curves": curves}

    def run(self, command: str) -> dict:
        from .report import write_report

        started = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        self.plan()
        accuracies = self.assets()
        m0 = self.m0()
        self.run_methods(m0)
        t0 = time.time()
        results = self.collect(m0)
        p = self.preset
        results["meta"] = {
            "command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_description(),
            "preset": {k: v for k, v in dataclasses.asdict(p).items()}, "seed": self.seed,
            "wall_seconds": round(time.time() - started, 1), "reward_models": accuracies,
            "pairwise_cringe": pairwise_cringe_settings(),
        }
        write_report(results, self.out)
        self.progress.finish("report", time.time() - t0)
        return results


def pairwise_cringe_settings() -> dict:
    from .trainer import PAIRWISE_CRINGE_ALPHA, CringeConfig

    fields = {f.name: f.default for f in dataclasses.fields(CringeConfig)}
    settings = {k: fields[k] for k in ("k", "margin", "temperature", "margin_on", "detach_gate")}
    return {"alpha": PAIRWISE_CRINGE_ALPHA, **settings}


def machine_description() -> str:
    import os

    import torch

    memory = ""
    try:
        with open("/proc/meminfo") as f:
            memory = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores{memory}, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cringe demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="the small preset (about 5 minutes on 2 CPU cores)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default | quick | smoke (tests)")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    name = args.preset or ("quick" if args.quick else "default")
    preset = PRESETS[name]
    if args.methods:
        chosen = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
        preset = dataclasses.replace(preset, methods=chosen)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cringe").setLevel(logging.INFO)
    command = "cringe demo " + " ".join(argv if argv is not None else sys.argv[2:])
    results = Demo(preset, args.output_dir, seed=args.seed).run(command.strip())
    print("\n" + (Path(args.output_dir) / "report.md").read_text())
    print(f"report: {Path(args.output_dir) / 'report.html'} (wall time {_fmt(results['meta']['wall_seconds'])})")
