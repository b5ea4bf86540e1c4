"""cringe.demo.methods: the demo and the instruction comparison build each method's run config in one place. The
configs are pinned: a run directory resumes only with the config it was made with (cringe.loop.resume)."""

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import cringe.demo.pipeline as pipeline
import cringe.models
from cringe.demo import methods

ROOT = Path(__file__).resolve().parents[1]

# what the loop's config held for each method before the two copies became cringe.demo.methods:
# name -> (loss, rounds, round_prompts, per_device_train_batch_size, learning_rate, DPO family)
DEMO_DEFAULT = {
    "dpo": ("dpo", 1, None, 8, 1e-4, True),
    "binary_cringe": ("binary_cringe", 1, None, 16, 1e-4, False),  # one sequence a row: twice the rows
    "pairwise_cringe": ("pairwise_cringe", 1, None, 8, 1e-4, False),
    "iterative_dpo": ("dpo", 3, 32, 8, 1e-4, True),
    "iterative_pairwise_cringe": ("pairwise_cringe", 3, 32, 8, 1e-4, False),
    "rloo": ("pairwise_cringe", 1, None, 8, 1e-4, False),  # TRL trains it; the run directory samples and evaluates
    "iterative_sft": ("sft", 3, 32, 8, 1e-4, False),
}
COMPARE_DEFAULT = {
    "dpo": ("dpo", 1, None, 8, 1e-4, True),
    "binary_cringe": ("binary_cringe", 1, None, 16, 1e-4, False),
    "binary_cringe_low_lr": ("binary_cringe", 1, None, 16, 1e-5, False),  # LEARNING_RATES
    "pairwise_cringe": ("pairwise_cringe", 1, None, 8, 1e-4, False),
    "iterative_dpo": ("dpo", 3, 24, 8, 1e-4, True),
    "iterative_pairwise_cringe": ("pairwise_cringe", 3, 24, 8, 1e-4, False),
    "iterative_sft": ("sft", 3, 24, 8, 1e-4, False),
}
# TRL trains the online methods (grpo); their run directories sample and evaluate only
ONLINE = ("pairwise_cringe", 1, None, 8, 1e-4, False)
FIXED_TRAIN = {
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "logging_steps": 5,
    "save_strategy": "no",
}


def load_comparison():
    spec = importlib.util.spec_from_file_location(
        "instructions_compare", ROOT / "bench/research/instructions_compare.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def demo_with_assets(tmp_path, preset="default"):
    """A Demo whose asset paths are set without building the judges (the configs only name them)."""
    demo = pipeline.Demo(pipeline.PRESETS[preset], str(tmp_path / "demo"), seed=3)
    demo.train_file, demo.eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    demo.proxy_dir, demo.gold_dir = tmp_path / "proxy", tmp_path / "gold"
    return demo


def comparison_with_prompts(tmp_path, grid="default"):
    compare = load_comparison()
    comparison = compare.Comparison(compare.GRIDS[grid], tmp_path / "compare" / "seed-2", 2)
    comparison.train_file, comparison.eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    return compare, comparison


def check_config(config, expected, out: Path, bf16: bool) -> None:
    loss, rounds, round_prompts, batch, learning_rate, dpo_family = expected
    assert (config.loss, config.rounds, config.round_prompts) == (loss, rounds, round_prompts)
    reference = {"beta": 0.1, "precompute_ref_logps": True} if dpo_family else {}
    assert config.train == {
        **FIXED_TRAIN,
        "per_device_train_batch_size": batch,
        "learning_rate": learning_rate,
        "bf16": bf16,
        **reference,
    }
    assert config.first_round_from == config.baseline_from == str(out / "m0")


@pytest.mark.parametrize("bf16", [True, False])
def test_the_demos_method_configs_are_unchanged(tmp_path, monkeypatch, bf16):
    monkeypatch.setattr(pipeline, "cpu_prefers_bf16", lambda: bf16)
    demo = demo_with_assets(tmp_path)
    assert set(DEMO_DEFAULT) == set(pipeline.METHODS)
    for name, expected in DEMO_DEFAULT.items():
        config = demo.method_config(name)
        check_config(config, expected, tmp_path / "demo", bf16)
        assert config.output_dir == str(tmp_path / "demo" / "methods" / name)
        assert (config.eval_every, config.eval_samples, config.seed) == (1, 1, 3)
        assert config.sampling_dtype == ("bfloat16" if bf16 else None)
        assert config.reward["path"] == str(tmp_path / "proxy") and config.reward["max_length"] == 64
        assert config.eval_reward["kwargs"] == {"judge_dir": str(tmp_path / "gold")}


def test_the_demos_smoke_preset_trains_in_fp32_at_its_own_rate(tmp_path):
    demo = demo_with_assets(tmp_path, "smoke")
    check_config(demo.method_config("binary_cringe"), ("binary_cringe", 1, None, 4, 1e-3, False), demo.out, False)
    check_config(demo.method_config("iterative_dpo"), ("dpo", 2, 4, 2, 1e-3, True), demo.out, False)


@pytest.mark.parametrize("bf16", [True, False])
def test_the_comparisons_method_configs_are_unchanged(tmp_path, monkeypatch, bf16):
    monkeypatch.setattr(cringe.models, "cpu_prefers_bf16", lambda: bf16)
    compare, comparison = comparison_with_prompts(tmp_path)
    assert set(COMPARE_DEFAULT) == set(compare.LOOP_METHODS) and "grpo" in compare.METHODS
    for name in compare.METHODS:
        expected = COMPARE_DEFAULT.get(name, ONLINE)
        config = comparison.method_config(name)
        check_config(config, expected, comparison.out, bf16)
        assert config.output_dir == str(comparison.out / "methods" / name)
        assert (config.eval_every, config.eval_samples, config.seed) == (1, 2, 2)
        assert config.sampling_dtype == ("bfloat16" if bf16 else None)
        assert config.reward == {"type": "instructions", "min_words": 10} and config.eval_reward is None
        assert config.sampling == {"n": 8, "max_new_tokens": 128, "batch_size": 64}


def test_the_comparisons_smoke_grid_never_uses_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(cringe.models, "cpu_prefers_bf16", lambda: True)
    _, comparison = comparison_with_prompts(tmp_path, "smoke")
    check_config(comparison.method_config("dpo"), ("dpo", 1, None, 2, 1e-3, True), comparison.out, False)


class FakeRun:
    """IterativeRun's surface draw_m0 uses: files appear where the real stages would write them."""

    made: list = []

    def __init__(self, config):
        self.config, self.dir = config, Path(config.output_dir)
        self.calls = []
        self.run_dir = self
        FakeRun.made.append(self)

    @contextlib.contextmanager
    def session(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        yield self

    def prompts(self):
        return ["p"]

    def samples(self, path):
        return [json.loads(line) for line in Path(path).read_text().splitlines()]

    def sample(self, k, prompts, path, n=None, stream="train", evaluation=False):
        assert (k, n, stream, evaluation) == (0, None, "train", False), "M0's training samples: the training stream"
        self.calls.append("sample")
        Path(path).write_text('{"completion": "c"}\n')

    def score(self, prompts, samples, path, evaluation=False):
        assert not evaluation, "M0's training samples are scored with the training reward"
        self.calls.append("score")
        Path(path).write_text('{"score": 1.0}\n')

    def baseline(self):
        self.calls.append("baseline")


def test_m0_is_drawn_once_and_the_comparison_times_only_that_draw(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "IterativeRun", FakeRun)
    FakeRun.made = []
    _, comparison = comparison_with_prompts(tmp_path, "smoke")
    comparison.m0()
    first = FakeRun.made[-1]
    # the M0 run's config is checked on every resume: the base config, one round, nothing else
    assert first.config == methods.IterateConfig(
        **comparison.base_config(), output_dir=str(comparison.out / "m0"), rounds=1
    )
    assert first.calls == ["sample", "score", "baseline"]
    timing = comparison.out / "m0" / "m0_seconds.json"
    recorded = json.loads(timing.read_text())["seconds"]
    assert comparison.m0_seconds == recorded >= 0
    timing.write_text(json.dumps({"seconds": 1234.5}))
    comparison.m0()
    assert FakeRun.made[-1].calls == ["baseline"]  # nothing drawn again, so the first draw's time stays
    assert comparison.m0_seconds == 1234.5


def test_the_demo_reports_both_m0_stages_even_when_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "IterativeRun", FakeRun)
    demo = demo_with_assets(tmp_path, "smoke")
    for _ in range(2):
        demo.progress.seconds.clear()
        demo.m0()
        assert set(demo.progress.seconds) == {"M0 samples", "M0 held-out"}
    assert FakeRun.made[-1].calls == ["baseline"]


def _row(strict: float, loose: float, seeds: int) -> dict:
    """A report table row as `combine` writes it (only what merging and the markdown read)."""

    def acc(mean):
        return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 128 * seeds}

    return {
        "prompt_level_strict": acc(strict),
        "instruction_level_loose": acc(loose),
        "prompt_level_loose": acc(strict),
        "instruction_level_strict": acc(loose),
        "tokens": 100.0,
        "cut": 0.5,
        "kl": 1.0,
        "seconds": 60.0,
        "seeds": seeds,
        "per_seed_prompt_strict": [strict] * seeds,
        "per_type": {"punctuation:no_comma": {"n": 10, "loose": loose, "strict": strict}},
    }


def _report(rows: dict, date: str = "2026-12-03") -> dict:
    return {
        "meta": {"date": date, "machine": "xeon (2 cores)"},
        "table": rows,
        "curves": {
            name: [{"round": 1, "prompt_level_strict": 0.1, "instruction_level_loose": 0.2, "kl": 1.0, "seeds": 1}]
            for name in rows
        },
    }


def test_an_earlier_report_fills_in_the_methods_not_rerun_and_shows_the_reruns_beside_it():
    compare = load_comparison()
    earlier = _report({"start": _row(0.26, 0.45, 3), "dpo": _row(0.31, 0.52, 3), "grpo": _row(0.30, 0.50, 1)})
    here = _report({"start": _row(0.28, 0.46, 3), "grpo": _row(0.35, 0.55, 3)}, date="2026-12-07")
    merged = compare.merge_earlier({"table": here["table"], "curves": here["curves"]}, earlier)
    assert list(merged["table"]) == ["start", "dpo", "grpo"]  # the report's order, not the files'
    assert merged["table"]["dpo"]["source"] == "2026-12-03, xeon (2 cores)"
    assert merged["curves"]["dpo"] == earlier["curves"]["dpo"]
    grpo = merged["table"]["grpo"]
    assert "source" not in grpo and grpo["seeds"] == 3 and grpo["prompt_level_strict"]["mean"] == 0.35
    assert grpo["earlier"]["prompt_level_strict"] == 0.30 and grpo["earlier"]["seeds"] == 1
    page = compare.markdown(merged, {**here["meta"], "command": "c", "seeds": [0, 1, 2], "grid": "{}", "grpo": "{}"})
    assert "| DPO * |" in page and "| GRPO (TRL GRPOTrainer) |" in page
    assert "from the earlier report (2026-12-03, xeon (2 cores))" in page
    assert "| GRPO (TRL GRPOTrainer) | 30.0 | 35.0 | 50.0 | 55.0 | 30 | 35, 35, 35 |" in page
