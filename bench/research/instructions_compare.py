"""The instruction-following comparison: Pairwise Cringe, DPO, binary Cringe, SFT and GRPO on IFEval-style prompts.

    python bench/research/instructions_compare.py --seed 0            # one seed (resumes; about an hour on 2 cores)
    python bench/research/instructions_compare.py --seed 0 --methods dpo,grpo   # a subset, e.g. one per call
    python bench/research/instructions_compare.py --report            # the table over every seed run so far
    python bench/research/instructions_compare.py --report --with bench/results/<earlier>.json   # + its rows

The testbed is `cringe.testbeds.instructions`: SmolLM2-135M-Instruct answers prompts generated the way IFEval's
were, and IFEval's own checkers (`reward: {type: instructions}`) score each answer: the reward is the fraction of
the prompt's instructions followed (loose), the binary label "all followed, strict". Every method starts from the
same model and gets the same number of sampled completions (ROUNDS x ROUND_PROMPTS prompts x SAMPLES each):
    dpo, binary_cringe, pairwise_cringe    one round on every training prompt (the same M0 samples for all three)
    binary_cringe_low_lr                   binary_cringe at a tenth of the learning rate (LEARNING_RATES)
    iterative_dpo, iterative_pairwise_cringe, iterative_sft
                                           ROUNDS rounds of ROUND_PROMPTS fresh prompts; round 1 reuses M0's samples
    grpo                                   TRL's GRPOTrainer on every training prompt once, SAMPLES generations each
    grpo_loop_lr                           the same at the loop methods' learning rate instead of TRL's 1e-6
    best_of_n                              the start model, the verifier picking the best of n held-out samples
Held-out prompts share neither a topic nor a combination of instruction types with the training prompts. Each
method is reported with IFEval's four accuracies (95% intervals resampling prompts), KL to the start model, answer
length, wall time and accuracy per instruction type; the reward-KL frontier is plotted.

Everything lands in --output-dir/seed-S (one `cringe iterate` run directory per method, kept, so a rerun skips what
is done); --report writes bench/results/instructions_compare-<date>-<cpu>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cringe.machine import cpu_label, machine_description

RESULTS = Path(__file__).resolve().parents[1] / "results"

# name -> (loss, iterative); grpo is trained by TRL, best_of_n is not trained
LOOP_METHODS = {
    "dpo": ("dpo", False),
    "binary_cringe": ("binary_cringe", False),
    "binary_cringe_low_lr": ("binary_cringe", False),
    "pairwise_cringe": ("pairwise_cringe", False),
    "iterative_dpo": ("dpo", True),
    "iterative_pairwise_cringe": ("pairwise_cringe", True),
    "iterative_sft": ("sft", True),
}
# TRL's GRPOTrainer: at its default lr (1e-6) and, for a matched-KL point, at the loop methods' lr
ONLINE_METHODS = ("grpo", "grpo_loop_lr")
METHODS = (*LOOP_METHODS, *ONLINE_METHODS)
# the one retune: at the grid's lr binary Cringe collapsed on seed 0 (most of its rows are negatives here: few samples
# follow every instruction strictly), so it is also reported at a tenth of it
LEARNING_RATES = {"binary_cringe_low_lr": 1e-5}
LABELS = {
    "start": "Start model (SmolLM2-135M-Instruct)",
    "dpo": "DPO",
    "binary_cringe": "Binary Cringe (pass/fail labels)",
    "binary_cringe_low_lr": "Binary Cringe, lr 1e-5 (pass/fail labels)",
    "pairwise_cringe": "Pairwise Cringe",
    "iterative_dpo": "Iterative DPO",
    "iterative_pairwise_cringe": "Iterative Pairwise Cringe",
    "iterative_sft": "Iterative SFT on the best sample",
    "grpo": "GRPO (TRL GRPOTrainer)",
    "grpo_loop_lr": "GRPO, lr 1e-4 (the loop methods')",
}
BEST_OF = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Grid:
    policy: str = "smollm2-135m-instruct"
    rounds: int = 3
    round_prompts: int = 24
    samples: int = 8  # per training prompt: SAMPLES_PER_PROMPT of the testbed (ties below 25% of prompts)
    max_new_tokens: int = 128  # the testbed's MAX_NEW_TOKENS
    min_words: int = 10  # the testbed's length guard
    eval_prompts: int = 64
    eval_samples: int = 2
    learning_rate: float = 1e-4  # the sentiment demo's, for every loop method
    pairs_per_step: int = 8
    epochs: float = 1.0
    beta: float = 0.1  # DPO
    sampling_batch: int = 64
    grpo_save_steps: int = 12
    types: tuple[str, ...] | None = None  # instruction types (None: the testbed's DEFAULT_TYPES)


GRIDS = {
    "default": Grid(),
    # the whole comparison on a tiny random policy in seconds, for the slow test
    "smoke": Grid(
        policy="tiny-random-llama",
        rounds=2,
        round_prompts=4,
        samples=4,
        max_new_tokens=8,
        min_words=2,  # random tokens make 0-4 words: the guard is what makes a tiny random policy's samples differ
        eval_prompts=6,
        eval_samples=1,
        learning_rate=1e-3,
        pairs_per_step=2,
        sampling_batch=16,
        grpo_save_steps=1,
        # types random text follows about half the time, so that the samples of a prompt differ
        types=("punctuation:no_comma", "length_constraints:number_words", "keywords:forbidden_words"),
    ),
}


# ----- running one seed -----------------------------------------------------------------------------------------
class Comparison:
    def __init__(self, grid: Grid, out: Path, seed: int):
        from cringe.models import cpu_prefers_bf16

        self.grid, self.out, self.seed = grid, out, seed
        self.bf16 = grid.policy != "tiny-random-llama" and cpu_prefers_bf16()
        self.reward = {"type": "instructions", "min_words": grid.min_words}

    def prompt_files(self) -> None:
        from cringe.testbeds import instructions as T

        g = self.grid
        types = {"types": g.types} if g.types else {}
        rows = T.make_prompts(g.rounds * g.round_prompts, g.eval_prompts, seed=self.seed, **types)
        data = self.out / "data"
        self.train_file = T.write_prompt_file(rows["train"], data / "train_prompts.jsonl")
        self.eval_file = T.write_prompt_file(rows["heldout"], data / "eval_prompts.jsonl")

    def base_config(self) -> dict:
        g = self.grid
        return dict(
            model=g.policy,
            prompts=str(self.train_file),
            eval_prompts=str(self.eval_file),
            reward=self.reward,
            sampling={"n": g.samples, "max_new_tokens": g.max_new_tokens, "batch_size": g.sampling_batch},
            sampling_dtype="bfloat16" if self.bf16 else None,
            eval_samples=g.eval_samples,
            seed=self.seed,
            backend="transformers",
        )

    def training(self, name: str):
        from cringe.demo.methods import Training

        g = self.grid
        return Training(LEARNING_RATES.get(name, g.learning_rate), g.pairs_per_step, g.epochs, g.beta, self.bf16)

    def m0(self):
        """The start model's samples on every training prompt, scored once (every loop method's round 1 trains on
        them; m0_seconds.json: the seconds that took), and its held-out samples (every method's baseline)."""
        from cringe.demo.methods import draw_m0
        from cringe.durable.files import read_json, write_json

        timing_path = self.out / "m0" / "m0_seconds.json"

        def record(seconds: float, scored_now: bool) -> None:
            if scored_now:
                write_json(timing_path, {"seconds": round(seconds, 1)})

        run = draw_m0(self.base_config(), self.out / "m0", on_samples=record)
        self.m0_seconds = read_json(timing_path)["seconds"] if timing_path.exists() else None
        return run

    def best_of_n(self) -> None:
        """max(BEST_OF) samples of the start model on every held-out prompt, scored."""
        from cringe.demo.methods import sample_and_score
        from cringe.loop.run import IterateConfig, IterativeRun

        config = {**self.base_config(), "prompts": str(self.eval_file)}
        run = IterativeRun(IterateConfig(**config, output_dir=str(self.out / "best_of_n"), rounds=1))
        with run.session():
            sample_and_score(run, run.prompts(), n=max(BEST_OF), evaluation=True, stream="eval")

    def method_config(self, name: str):
        from cringe.demo.methods import method_config

        g = self.grid
        loss, iterative = LOOP_METHODS.get(name, ("pairwise_cringe", False))  # grpo: the run directory only
        return method_config(
            self.base_config(),
            self.out / "methods" / name,
            loss=loss,
            iterative=iterative,
            rounds=g.rounds,
            round_prompts=g.round_prompts,
            training=self.training(name),
            m0_dir=self.out / "m0",
        )

    def grpo_settings(self, name: str = "grpo"):
        """TRL's GRPOConfig defaults (1.16: num_generations 8, beta 0, loss_type dapo, lr 1e-6, linear decay,
        temperature 1, scale_rewards group), except what a CPU and this comparison need, all listed here."""
        from cringe.demo.online import OnlineSettings

        g = self.grid
        lr = 1e-3 if g.policy == "tiny-random-llama" else g.learning_rate if name == "grpo_loop_lr" else None
        return OnlineSettings(
            num_generations=g.samples,  # = TRL's default 8 on the default grid
            max_completion_length=g.max_new_tokens,  # TRL: 512; the testbed's answers
            epochs=1.0,  # TRL: 3; each training prompt once = the loop methods' completions
            bf16=self.bf16,  # TRL: True; native bf16 only on CPUs that have it
            gradient_checkpointing=False,  # TRL: True; a 135M model fits, and recomputing costs CPU time
            save_steps=g.grpo_save_steps,  # checkpoints to resume from
            seed=self.seed,
            overrides={"learning_rate": lr} if lr else {},
        )

    def run_method(self, name: str) -> None:
        from cringe.loop.run import IterativeRun

        run = IterativeRun(self.method_config(name))
        if name in ONLINE_METHODS:
            from cringe.demo.online import run_online

            run_online(run, "grpo", self.grpo_settings(name))
        else:
            run.run()

    def run(self, methods) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.prompt_files()
        from cringe.durable.files import write_json

        write_json(self.out / "grid.json", {**asdict(self.grid), "seed": self.seed, "bf16": self.bf16})
        self.m0()
        for name in methods:
            t0 = time.time()
            if name == "best_of_n":
                self.best_of_n()
            else:
                self.run_method(name)
            print(f"[{time.strftime('%H:%M:%S')}] seed {self.seed}: {name} done in {time.time() - t0:.0f}s", flush=True)


# ----- collecting -----------------------------------------------------------------------------------------------
def instruction_results(scores_path: Path, samples_path: Path, seed: int) -> list[dict]:
    """score_rows-like results ({key, instruction_id_list, strict, loose, tokens}) of one scored samples file; the
    key is (seed, prompt), so results of several seeds pool without mixing prompts."""
    from cringe.durable.files import read_jsonl
    from cringe.loop.rundir import RunDir

    rows = RunDir.score_rows(scores_path, samples_path)
    samples = read_jsonl(samples_path)
    return [
        {
            "key": f"{seed}:{s['prompt_id']}",
            **r["instructions"],
            "score": r["score"],
            "tokens": len(s["completion_ids"]),
            "cut": s["finish_reason"] == "length",
        }
        for r, s in zip(rows, samples)
    ]


def best_of(results: list[dict], n: int) -> list[dict]:
    """Per prompt, the first of its first n samples with the highest reward (the verifier picking)."""
    by_prompt = defaultdict(list)
    for r in results:
        by_prompt[r["key"]].append(r)
    return [max(rs[:n], key=lambda r: r["score"]) for rs in by_prompt.values()]


def best_of_n_kl(n: int) -> float:
    """The analytic upper bound of KL(best-of-n || start), log n - (n-1)/n (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def collect_seed(out: Path, seed: int) -> dict:
    """{method: [point per evaluated round]}; each point holds the round's results and its KL, time and budget."""
    from cringe.durable.files import read_json
    from cringe.loop import rundir
    from cringe.loop.rundir import RunDir

    m0 = RunDir(out / "m0")
    m0_seconds = read_json(m0.path / "m0_seconds.json")["seconds"] if (m0.path / "m0_seconds.json").exists() else 0
    points: dict[str, list[dict]] = {}
    if m0.baseline_scores.exists():
        points["start"] = [
            {
                "round": 0,
                "results": instruction_results(m0.baseline_scores, m0.baseline_samples, seed),
                "kl": 0.0,
                "seconds": 0.0,
            }
        ]
    bon = RunDir(out / "best_of_n")
    if (bon.path / rundir.SCORES).exists():
        results = instruction_results(bon.path / rundir.SCORES, bon.path / rundir.SAMPLES, seed)
        for n in BEST_OF:
            points[f"best_of_{n}"] = [{"round": 0, "results": best_of(results, n), "kl": best_of_n_kl(n), "seconds": 0}]
    for name in METHODS:
        run = RunDir(out / "methods" / name)
        if not run.exists():
            continue
        curve = []
        for k in run.evaluated_rounds():
            evaluation = run.evaluation(k)
            own = sum(run.seconds(step, k) for step in (rundir.SAMPLES, rundir.SCORES, rundir.MODEL))
            curve.append(
                {
                    "round": k,
                    "results": instruction_results(
                        run.file(k, rundir.EVAL_SCORES), run.file(k, rundir.EVAL_SAMPLES), seed
                    ),
                    "kl": evaluation["kl"]["mean"],
                    # the start model's shared samples count for every loop method (its round 1 trains on them)
                    "seconds": own + (m0_seconds if name not in ONLINE_METHODS else 0.0),
                }
            )
        iterative = LOOP_METHODS.get(name, (None, False))[1]
        expected = read_json(out / "grid.json")["rounds"] if iterative else 1
        if curve and curve[-1]["round"] == expected:
            points[name] = curve
        elif curve:  # an interrupted run: its last round evaluated so far is not the method's result
            print(f"seed {seed}: {name} left out, evaluated through round {curve[-1]['round']} of {expected}")
    return points


def summarise(results: list[dict], seed: int = 0) -> dict:
    from cringe.instructions import accuracies

    return {
        **accuracies(results, seed=seed),
        "tokens": statistics.fmean(r["tokens"] for r in results),
        "cut": statistics.fmean(r["cut"] for r in results),
        "n": len(results),
        "prompts": len({r["key"] for r in results}),
    }


def combine(seeds: dict[int, dict]) -> dict:
    """Per method: the last evaluated round of every seed, results pooled (intervals resample prompts of all
    seeds), KL and time averaged over seeds; and per round, the same (the frontier)."""
    from cringe.instructions import per_type

    names = sorted({m for points in seeds.values() for m in points}, key=_order)
    table, curves = {}, {}
    for name in names:
        finals = [points[name][-1] for points in seeds.values() if name in points]
        table[name] = {
            **summarise([r for p in finals for r in p["results"]]),
            "kl": statistics.fmean(p["kl"] for p in finals),
            "seconds": statistics.fmean(p["seconds"] for p in finals),
            "seeds": len(finals),
            "per_seed_prompt_strict": [summarise(p["results"])["prompt_level_strict"]["mean"] for p in finals],
            "per_type": per_type([r for p in finals for r in p["results"]]),
        }
        by_round = defaultdict(list)
        for points in seeds.values():
            for p in points.get(name, []):
                by_round[p["round"]].append(p)
        curves[name] = [
            {
                "round": k,
                **{
                    key: summarise([r for p in ps for r in p["results"]])[key]["mean"]
                    for key in ("prompt_level_strict", "instruction_level_loose")
                },
                "kl": statistics.fmean(p["kl"] for p in ps),
                "seeds": len(ps),
            }
            for k, ps in sorted(by_round.items())
        ]
    return {"table": table, "curves": curves}


def merge_earlier(combined: dict, earlier: dict) -> dict:
    """`combined` with the rows and curves of the methods it lacks taken from an earlier report's JSON (each such
    row names its source in "source"), so that a method rerun on its own (run directories do not outlive the
    machine they ran on) joins the rest. A method in both keeps this run's row, with the earlier one's means
    beside it under "earlier": whether the two runs agree is then on the page."""
    meta = earlier["meta"]
    source = f"{meta['date']}, {meta['machine']}"
    table, curves = {}, {}
    for name in sorted({*combined["table"], *earlier["table"]}, key=_order):
        if name in combined["table"]:
            table[name], curves[name] = dict(combined["table"][name]), combined["curves"][name]
            if name in earlier["table"]:
                then = earlier["table"][name]
                table[name]["earlier"] = {
                    "source": source,
                    "seeds": then["seeds"],
                    "per_seed_prompt_strict": then["per_seed_prompt_strict"],
                    **{key: then[key]["mean"] for key in ("prompt_level_strict", "instruction_level_loose")},
                }
        else:
            table[name], curves[name] = {**earlier["table"][name], "source": source}, earlier["curves"][name]
    return {"table": table, "curves": curves}


def _order(name: str) -> tuple:
    order = ["start", *(f"best_of_{n}" for n in BEST_OF), *METHODS]
    return (order.index(name) if name in order else len(order), name)


def _label(name: str) -> str:
    if name.startswith("best_of_"):
        return f"Best-of-{name.removeprefix('best_of_')} (start model, verifier picks)"
    return LABELS.get(name, name)


def _ci(x: dict) -> str:
    return f"{100 * x['mean']:.1f} ({100 * x['ci_low']:.0f}-{100 * x['ci_high']:.0f})"


def markdown(combined: dict, meta: dict) -> str:
    table = combined["table"]
    lines = [
        f"# The instruction-following comparison ({meta['date']})",
        "",
        f"`{meta['command']}` on {meta['machine']}. Seeds: {meta['seeds']} (each its own prompts and split). "
        f"Grid: {meta['grid']}. GRPO: {meta['grpo']}.",
        "",
        "Held-out prompts, IFEval's accuracies in % with 95% intervals (bootstrap over prompts, all seeds pooled). "
        "KL: Monte-Carlo KL(policy || start) per answer in nats (best-of-n: the analytic bound log n - (n-1)/n). "
        "Time: seconds of sampling, scoring and training per seed (the start model's shared samples included for "
        "the loop methods), mean over seeds.",
        "",
        "| method | prompt strict | instruction loose | prompt loose | instruction strict | KL | tokens | cut | "
        "time s | seeds | prompt strict per seed |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in table.items():
        per_seed = ", ".join(f"{100 * v:.0f}" for v in row["per_seed_prompt_strict"])
        lines.append(
            f"| {_label(name)}{' *' if 'source' in row else ''} | {_ci(row['prompt_level_strict'])} | {_ci(row['instruction_level_loose'])} | "
            f"{_ci(row['prompt_level_loose'])} | {_ci(row['instruction_level_strict'])} | {row['kl']:.3f} | "
            f"{row['tokens']:.0f} | {100 * row['cut']:.0f}% | {row['seconds']:.0f} | {row['seeds']} | {per_seed} |"
        )
    sources = sorted({row["source"] for row in table.values() if "source" in row})
    if sources:
        lines += ["", f"\\* from the earlier report ({'; '.join(sources)}); its times are that machine's."]
    again = {name: row["earlier"] for name, row in table.items() if "earlier" in row}
    if again:
        lines += [
            "",
            "## Run here and in the earlier report",
            "",
            "| method | earlier: prompt strict | here | earlier: instruction loose | here | earlier per seed | here per seed |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for name, then in again.items():
            now = table[name]
            lines.append(
                f"| {_label(name)} | {100 * then['prompt_level_strict']:.1f} | "
                f"{100 * now['prompt_level_strict']['mean']:.1f} | {100 * then['instruction_level_loose']:.1f} | "
                f"{100 * now['instruction_level_loose']['mean']:.1f} | "
                f"{', '.join(f'{100 * v:.0f}' for v in then['per_seed_prompt_strict'])} | "
                f"{', '.join(f'{100 * v:.0f}' for v in now['per_seed_prompt_strict'])} |"
            )
    types = sorted({t for row in table.values() for t in row["per_type"]})
    shown = [n for n in table if not n.startswith("best_of_") or n == "best_of_8"]
    lines += [
        "",
        "## Instruction-level loose accuracy per instruction type (%)",
        "",
        "| instruction | n | " + " | ".join(_label(n).split(" (")[0] for n in shown) + " |",
        "|---|---:|" + "---:|" * len(shown),
    ]
    for t in types:
        n = table[shown[0]]["per_type"].get(t, {}).get("n", 0)
        cells = [f"{100 * table[m]['per_type'][t]['loose']:.0f}" if t in table[m]["per_type"] else "-" for m in shown]
        lines.append(f"| {t} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Every evaluated round (the frontier's points)", ""]
    lines += [
        "| method | round | prompt strict % | instruction loose % | KL | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, curve in combined["curves"].items():
        for p in curve:
            lines.append(
                f"| {_label(name)} | {p['round']} | {100 * p['prompt_level_strict']:.1f} | "
                f"{100 * p['instruction_level_loose']:.1f} | {p['kl']:.3f} | {p['seeds']} |"
            )
    return "\n".join(lines) + "\n"


def plot(combined: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    curves = combined["curves"]
    for ax, key, title in zip(
        axes,
        ("prompt_level_strict", "instruction_level_loose"),
        ("prompt-level strict", "instruction-level loose"),
    ):
        bon = [curves[f"best_of_{n}"][0] for n in BEST_OF if f"best_of_{n}" in curves]
        if bon:
            ax.plot([p["kl"] for p in bon], [100 * p[key] for p in bon], "k--o", ms=3, label="best-of-n (1..16)")
        start = curves.get("start")
        for name in METHODS:
            if name not in curves:
                continue
            curve = (start or []) + curves[name]
            ax.plot([p["kl"] for p in curve], [100 * p[key] for p in curve], "-o", ms=4, label=_label(name))
        ax.set_xlabel("KL(policy || start), nats per answer")
        ax.set_ylabel(f"{title} accuracy, %")
        ax.set_title(f"Held-out {title} against KL")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def report(output_dir: Path, out_stem: Path, command: str, earlier: Path | None = None) -> None:
    from cringe.durable.files import read_json, write_atomic

    seeds = {}
    for seed_dir in sorted(output_dir.glob("seed-*")):
        seed = int(seed_dir.name.removeprefix("seed-"))
        seeds[seed] = collect_seed(seed_dir, seed)
    if not seeds:
        raise SystemExit(f"no seed-* directories under {output_dir}")
    combined = combine(seeds)
    if earlier is not None:
        combined = merge_earlier(combined, json.loads(earlier.read_text()))
    first = output_dir / f"seed-{min(seeds)}" / "grid.json"
    grid = read_json(first) if first.exists() else {}
    comparison = Comparison(Grid(**{k: v for k, v in grid.items() if k in Grid.__dataclass_fields__}), output_dir, 0)
    grpo = {k: v for k, v in asdict(comparison.grpo_settings()).items() if k != "seed"}
    meta = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "machine": f"{cpu_label()} ({machine_description()})",
        "seeds": sorted(seeds),
        "grid": json.dumps({k: v for k, v in grid.items() if k != "seed"}),
        "grpo": json.dumps(grpo),
    }
    write_atomic(out_stem.with_suffix(".md"), markdown(combined, meta))
    slim = {"meta": meta, "table": {k: {kk: vv for kk, vv in v.items()} for k, v in combined["table"].items()}}
    write_atomic(out_stem.with_suffix(".json"), json.dumps({**slim, "curves": combined["curves"]}, indent=1))
    plot(combined, out_stem.with_suffix(".png"))
    print(markdown(combined, meta))


def main(argv=None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--methods", default=",".join(("best_of_n", *METHODS)), help="comma-separated; in this order")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/instructions_compare"))
    parser.add_argument("--report", action="store_true", help="write the table over every seed run so far")
    parser.add_argument("--out", type=Path, default=None, help="results stem (default bench/results/...)")
    parser.add_argument(
        "--with",
        dest="earlier",
        type=Path,
        default=None,
        help="--report: an earlier report's .json; its rows fill in the methods not run under --output-dir",
    )
    args = parser.parse_args(argv)
    grid = GRIDS[args.grid]
    if args.report:
        stem = args.out or RESULTS / f"instructions_compare-{datetime.date.today().isoformat()}-{cpu_label()}"
        command = "python bench/research/instructions_compare.py " + " ".join(sys.argv[1:])
        report(args.output_dir, stem, command, args.earlier)
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in ("best_of_n", *METHODS)]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: best_of_n, {', '.join(METHODS)}")
    Comparison(replace(grid), args.output_dir / f"seed-{args.seed}", args.seed).run(methods)


if __name__ == "__main__":
    main()
