"""The recipes (recipes/*.yaml): each one checked offline by `cringe iterate --dry-run`, a mistake in one named in
one line, and one round of a recipe's own code path run on this CPU with tiny local stand-ins."""

import json

import pytest
import yaml

from cringe.errors import UserError
from cringe.recipes import dry_run, recipe_paths, stand_in

RECIPES = recipe_paths()


def test_the_recipes_are_there():
    names = {p.name for p in RECIPES}
    assert {
        f"ultrafeedback_{loss}_{size}.yaml" for loss in ("pairwise_cringe", "dpo") for size in ("1b", "8b")
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates_offline(recipe, capsys):
    from cringe.cli import main

    main(["iterate", "--config", str(recipe), "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("recipe OK") and "split train_gen" in out and "not checked offline" in out
    values = yaml.safe_load(recipe.read_text())
    assert values["reward"]["input"] == "conversation" and values["sampling"]["temperature"] == 1.0


def mutated(tmp_path, change):
    values = yaml.safe_load(RECIPES[0].read_text())
    change(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--config", str(path)]


def test_dry_run_names_the_bad_key(tmp_path):
    with pytest.raises(UserError, match="train: unknown key 'learning_rat'"):
        dry_run(mutated(tmp_path, lambda v: v["train"].update(learning_rat=1e-6)))
    with pytest.raises(UserError, match=r"reward \(model\): unknown keys \['max_len'\]"):
        dry_run(mutated(tmp_path, lambda v: v["reward"].update(max_len=4096)))
    with pytest.raises(UserError, match="neither a local file nor NAME:SPLIT"):
        dry_run(mutated(tmp_path, lambda v: v.update(prompts="HuggingFaceH4/ultrafeedback_binarized")))
    with pytest.raises(UserError, match="nowhere.yaml: no such file"):
        dry_run(mutated(tmp_path, lambda v: v.update(accelerate={"config_file": "nowhere.yaml"})))
    with pytest.raises(UserError, match="sampling"):
        dry_run(mutated(tmp_path, lambda v: v["sampling"].update(temperatur=1.0)))


@pytest.mark.parametrize("name", ["ultrafeedback_pairwise_cringe_1b", "ultrafeedback_dpo_1b"])
def test_a_recipe_runs_one_round_with_stand_ins(tmp_path, name):
    """The recipe's stages and files (sample -> score with a reward model of another tokenizer -> pair -> train
    -> evaluate on AlpacaFarm-format prompts), through `cringe iterate`, on the CPU."""
    from cringe.cli import main
    from cringe.generation import Sample
    from cringe.rewards import load_reward_source

    recipe = next(p for p in RECIPES if p.stem == name)
    values = stand_in(yaml.safe_load(recipe.read_text()), tmp_path)
    assert values["loss"] == yaml.safe_load(recipe.read_text())["loss"] and values["sampling"]["n"] == 8
    config = tmp_path / "stand_in.yaml"
    config.write_text(yaml.safe_dump(values))
    main(["iterate", "--config", str(config)])
    round_dir = tmp_path / "run" / "round-1"
    for f in ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "pairing.json", "eval.json", "model/config.json"):
        assert (round_dir / f).exists(), f
    samples = [Sample.from_dict(json.loads(line)) for line in (round_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 8
    # The tied UltraFeedback row is still a prompt; prompts reach the reward model as conversations.
    assert samples[0].prompt_messages == [{"role": "user", "content": "Write one sentence about the sky."}]
    scores = [json.loads(line)["score"] for line in (round_dir / "scores.jsonl").read_text().splitlines()]
    reward = load_reward_source({**values["reward"], "batch_size": 1}, device="cpu")
    direct = reward.score([s.prompt_messages for s in samples], [s.completion for s in samples])
    assert scores == pytest.approx(direct, abs=1e-4)
    evaluation = json.loads((round_dir / "eval.json").read_text())
    assert evaluation["n_prompts"] == 3 and evaluation["kl"] is not None
    pairing = json.loads((round_dir / "pairing.json").read_text())
    assert pairing  # the report the loop writes beside the pairs


def test_real_shape_stand_ins_have_the_published_sizes():
    """bench/gpu/gpu_recipe.py's models: the recipes' architectures at their published parameter counts (built on
    the meta device: no memory, no time)."""
    from cringe.models import build_tiny_tokenizer
    from cringe.standins import build_model, build_reward_tokenizer

    sizes = {}
    for shape, tok, classifier in (
        ("llama-3.2-1b", build_tiny_tokenizer(), False),
        ("llama-3.1-8b", build_tiny_tokenizer(), False),
        ("qwen3-0.6b", build_reward_tokenizer(), True),
    ):
        model = build_model(shape, tok, classifier=classifier, device="meta")
        sizes[shape] = sum(p.numel() for p in model.parameters())
        assert model.config.pad_token_id == tok.pad_token_id
    assert 1.23e9 < sizes["llama-3.2-1b"] < 1.24e9  # Llama-3.2-1B: 1.236B
    assert 8.0e9 < sizes["llama-3.1-8b"] < 8.1e9  # Llama-3.1-8B: 8.03B
    assert 0.59e9 < sizes["qwen3-0.6b"] < 0.60e9  # Qwen3-0.6B (tied embeddings), a one-logit head


@pytest.mark.slow
def test_gpu_recipe_script_smoke_on_cpu(tmp_path):
    """bench/gpu/gpu_recipe.py's own path (recipe -> real-shape swap -> 2 rounds -> table) with tiny models."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "gpu" / "gpu_recipe.py"),
            "--smoke",
            "--device",
            "cpu",
            "--prompts",
            "8",
            "--eval-prompts",
            "4",
            "--new-tokens",
            "8",
            "--train-steps",
            "2",
            "--work",
            str(tmp_path / "work"),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = next((tmp_path / "results").glob("gpu_recipe-*-smoke-cpu.md")).read_text()
    assert table.count("| samples.jsonl |") == 2 and table.count("| eval.json |") == 2
