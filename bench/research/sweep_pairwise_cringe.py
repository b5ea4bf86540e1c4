"""Choose Pairwise Cringe's defaults by a measured sweep on *training* prompts (never the demo's held-out ones).

    python bench/research/sweep_pairwise_cringe.py [--output-dir runs/sweep] [--validation-prompts 96] [--variants a,b]

Same set-up as `cringe demo` (default preset): SmolLM2-135M-Instruct, the same M0 samples on the demo's training
prompts labelled by the proxy reward model, one round of Pairwise Cringe. Each variant changes one setting of
the base (alpha 1, k 1, margin 1, temperature 1, Delta on the sum, detached gate). Validation prompts are further
reviews of the *training* prompt split, past the ones the demo trains on. Selection metric: proxy win rate
against M0 on those prompts (what a user without the examiner would have); gold numbers are printed beside it.
Writes runs/sweep/sweep.md (and .json). Resumable: finished variants are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

BASE = {"alpha": 1.0, "k": 1, "margin": 1.0, "temperature": 1.0, "margin_on": "sum", "detach_gate": True}
VARIANTS = {
    "base": {},
    "alpha=0.2": {"alpha": 0.2},
    "alpha=5": {"alpha": 5.0},
    "k=5": {"k": 5},
    "margin=0": {"margin": 0.0},
    "margin=10": {"margin": 10.0},
    "temperature=10": {"temperature": 10.0},
    "mean,margin=0.1": {"margin_on": "mean", "margin": 0.1},
    "live gate": {"detach_gate": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/sweep")
    parser.add_argument("--validation-prompts", type=int, default=96)
    parser.add_argument("--variants", help=f"comma-separated subset of {list(VARIANTS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from cringe.demo.pipeline import PRESETS, Demo, machine_description
    from cringe.evaluate import compare, format_table
    from cringe.loop import rundir
    from cringe.loop.run import IterativeRun
    from cringe.rewards import load_reward_source
    from cringe.testbeds import sentiment

    preset = PRESETS["default"]
    out = Path(args.output_dir)
    demo = Demo(preset, str(out))
    demo.plan()
    demo.assets()
    demo.m0()
    splits = sentiment.make_splits(demo.seed, preset.sizes)
    used = preset.rounds * preset.round_prompts
    validation = splits["train_prompts"][used : used + args.validation_prompts]
    eval_texts = {r["text"] for r in splits["eval_prompts"]}
    assert not eval_texts & {r["text"] for r in validation}, "validation prompts must not be evaluation prompts"
    val_file = sentiment.write_prompt_file(validation, out / "data" / "validation_prompts.jsonl")
    proxy_spec = demo.base_config()["reward"]
    judge = load_reward_source(demo.base_config()["eval_reward"])  # gold: printed beside, never used to select

    chosen = list(VARIANTS) if not args.variants else [v.strip() for v in args.variants.split(",")]
    rows = []
    for name in chosen:
        settings = {**BASE, **VARIANTS[name]}
        config = demo.method_config("pairwise_cringe")
        config = dataclasses.replace(
            config,
            output_dir=str(out / "variants" / name.replace("=", "-").replace(",", "_").replace(" ", "-")),
            eval_prompts=str(val_file),
            eval_reward=proxy_spec,
            train={**config.train, **settings},
            baseline_from=None,
        )  # M0 is sampled on the validation prompts instead
        run = IterativeRun(config)
        t0 = time.time()
        evaluation = run.run()[-1]  # proxy-scored: the selection criterion
        d = run.run_dir
        samples, base = d.samples(d.file(1, rundir.EVAL_SAMPLES)), d.samples(d.baseline_samples)
        gold = compare(
            samples,
            judge.score([""] * len(samples), [s.completion for s in samples]),
            base,
            judge.score([""] * len(base), [s.completion for s in base]),
        )
        log = json.loads((d.model(1) / "train_log.json").read_text())
        gates = [h["gate"] for h in log if "gate" in h]
        w = evaluation["win_rate"]
        rows.append(
            {
                "variant": name,
                **settings,
                "proxy_win": w["win_rate"],
                "proxy_ci": f"{w['ci_low']:.3f}..{w['ci_high']:.3f}",
                "gold_win": gold["win_rate"]["win_rate"],
                "gold_reward": gold["reward"]["mean"],
                "kl": evaluation["kl"]["mean"],
                "length": evaluation["text"]["length_tokens"],
                "gate_first": gates[0] if gates else float("nan"),
                "gate_last": gates[-1] if gates else float("nan"),
                "seconds": round(time.time() - t0),
            }
        )
        logging.info("variant %s: %s", name, rows[-1])
    table = format_table(
        rows,
        [
            ("variant", "variant"),
            ("proxy win vs M0", "proxy_win"),
            ("95% CI", "proxy_ci"),
            ("gold win vs M0", "gold_win"),
            ("gold reward", "gold_reward"),
            ("KL", "kl"),
            ("length", "length"),
            ("mean gate (first log)", "gate_first"),
            ("mean gate (last log)", "gate_last"),
            ("s", "seconds"),
        ],
    )
    text = (
        f"# Pairwise Cringe sweep on training prompts\n\n`python bench/research/sweep_pairwise_cringe.py` · "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} · {machine_description()}\n\n"
        f"{used} training prompts x {preset.samples_per_prompt} M0 samples (proxy-labelled, best vs worst), one "
        f"round, lr {preset.learning_rate}, {preset.epochs} epoch; validation: {len(validation)} further "
        f"training-split prompts, 1 sample each; win rates against M0's samples.\n\n{table}\n"
    )
    (out / "sweep.md").write_text(text)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
