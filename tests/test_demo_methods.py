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
