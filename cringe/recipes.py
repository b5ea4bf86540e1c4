"""The recipes (recipes/*.yaml) checked offline, and run end to end with tiny local stand-ins.

`dry_run(argv)` is `cringe iterate --config RECIPE --dry-run`: every key typed and checked as the run would (the
loop's own parser and IterateConfig), the reward sources' keys, the accelerate config file, the prompt sources'
form; nothing is downloaded and no model is loaded, so what only the Hub can answer (that a model or a split
exists, a gated licence) is listed as not checked.

`stand_in(values, work)` swaps a recipe's Hub pieces for local ones with the same roles (a random Llama policy
with a chat template, a random Qwen3 classifier reward model with a tokenizer of its own, UltraFeedback-shaped
prompt rows, AlpacaFarm-format held-out rows) and its GPU settings for CPU ones, keeping every other key: the
recipe's stages and files on a CPU in a minute (tests/test_recipes.py, bench/gpu/gpu_recipe.py --smoke).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from cringe.config import read_yaml
from cringe.data.formats import split_source
from cringe.errors import UserError
from cringe.loop.config import parse_iterate_args
from cringe.models import build_tiny_model, build_tiny_tokenizer
from cringe.rewards import check_reward_spec
from cringe.standins import build_model, build_reward_tokenizer, save_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def recipe_paths() -> list[Path]:
    return sorted(RECIPES.glob("*.yaml"))


def _source_note(key: str, source: str | None) -> str | None:
    """A prompt source in a form that will load, or a UserError; the note says what only a run can check."""

    if source is None:
        return None
    if os.path.exists(source):
        return f"{key}: local file {source}"
    name, split = split_source(source)
    if Path(source).suffix.lower() in (".json", ".jsonl", ".parquet", ".csv"):
        raise UserError(f"{key}: {source}: no such file")
    if split is None:
        raise UserError(
            f"{key}: {source!r} is neither a local file nor NAME:SPLIT (a Hub dataset needs its split, "
            "e.g. HuggingFaceH4/ultrafeedback_binarized:train_gen)"
        )
    return f"{key}: Hub dataset {name}, split {split} (not fetched: needs the Hub)"


def dry_run(argv: list[str]) -> str:
    """Check a recipe as `cringe iterate` would read it (plus flags), offline. Returns a report; raises UserError."""

    # Every top-level and section key typed and checked, reward sources and the accelerate config file too.
    config = parse_iterate_args(argv)
    kinds = {"reward": check_reward_spec(config.reward, "reward")}
    if config.eval_reward is not None:
        kinds["eval_reward"] = check_reward_spec(config.eval_reward, "eval_reward")
    notes = [_source_note("prompts", config.prompts), _source_note("eval_prompts", config.eval_prompts)]
    launch_file = config.accelerate.get("config_file")
    unchecked = [f"model {config.model}"]
    for key in ("reward", "eval_reward"):
        spec = getattr(config, key)
        if spec and spec.get("type") == "model":
            unchecked.append(f"{key} model {spec['path']}")
    sampling = {"n": 4, "max_new_tokens": 256, **config.sampling}
    per_round = config.round_prompts or "every"
    lines = [
        f"recipe OK: {config.loss}, {config.rounds} rounds of {per_round} prompts x {sampling['n']} samples "
        f"(<= {sampling['max_new_tokens']} new tokens), backend {config.backend}; reward sources "
        + ", ".join(f"{k}: {v}" for k, v in kinds.items()),
        *[n for n in notes if n],
        "training: "
        + (
            f"accelerate launch ({launch_file}, {config.accelerate.get('num_processes', '?')} processes)"
            if config.accelerate
            else "in this process"
        ),
        "not checked offline (needs the Hub): " + "; ".join(unchecked),
    ]
    return "\n".join(lines)


def load_recipe(path) -> dict:
    return read_yaml(path)


def build_stand_ins(work: Path) -> dict:
    """Tiny local models and data with the recipe's roles; returns their paths."""

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    policy_tok = build_tiny_tokenizer()
    policy = save_model(build_tiny_model(policy_tok), policy_tok, work / "policy")
    reward_tok = build_reward_tokenizer()
    reward = save_model(build_model("tiny-qwen3", reward_tok, classifier=True), reward_tok, work / "reward")
    # UltraFeedback's row shape (text prompt; chosen/rejected/messages repeating the user turn; one pair tied on
    # purpose: its prompt is still a prompt), from the repository's example file.
    rows = [json.loads(line) for line in (ROOT / "examples/data/ultrafeedback_style.jsonl").read_text().splitlines()]
    rows[0]["rejected"] = rows[0]["chosen"]
    prompts = work / "ultrafeedback_train_gen.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "policy": str(policy),
        "reward": str(reward),
        "prompts": str(prompts),
        "eval_prompts": str(ROOT / "examples/data/alpaca_farm_evaluation_sample.json"),
    }


def swap_in(
    values: dict,
    local: dict,
    work: Path,
    *,
    rounds: int = 1,
    round_prompts: int = 4,
    eval_prompts: int = 3,
    steps: int = 2,
    max_new_tokens: int = 8,
    on_gpu: bool = False,
    backend: str = "transformers",
) -> dict:
    """A recipe's values with its Hub pieces replaced by `local` ({policy, reward, prompts, eval_prompts}: paths)
    and its size cut to `rounds` x `round_prompts`, every other key kept: same loss, pairing, sampling temperature
    and n, reward input, reference policy, training settings. On the CPU, GPU-only settings (vLLM options,
    accelerate, bf16, checkpointing) go; on a GPU they stay, but for accelerate (one GPU here)."""
    out = copy.deepcopy(values)
    out.update(
        model=local["policy"],
        prompts=local["prompts"],
        eval_prompts=local["eval_prompts"],
        output_dir=str(Path(work) / "run"),
        rounds=rounds,
        round_prompts=round_prompts,
        max_eval_prompts=eval_prompts,
        backend=backend,
        report_to=[],
    )
    # A random policy seldom says EOS: with drop_truncated every sample would be cut and no pair left.
    out["drop_truncated"] = False
    out.pop("accelerate", None)
    if not on_gpu:
        out.update(device="cpu", dtype="float32", stage_processes=False)
        for key in ("vllm", "sampling_python", "sampling_dtype"):
            out.pop(key, None)
    elif backend != "vllm":
        out.pop("vllm", None)
    dtype = "bfloat16" if on_gpu else "float32"
    out["reward"] = {**out["reward"], "path": local["reward"], "dtype": dtype}
    if out.get("eval_reward"):
        out["eval_reward"] = {**out["eval_reward"], "path": local["reward"], "dtype": dtype}
    out["sampling"] = {
        **out.get("sampling", {}),
        "max_new_tokens": max_new_tokens,
        **({} if on_gpu else {"batch_size": 32}),
    }
    train = dict(out.get("train", {}))
    if not on_gpu:
        for key in ("bf16", "fp16", "gradient_checkpointing"):
            train.pop(key, None)
        train.update(
            per_device_train_batch_size=2,
            use_cpu=True,
            max_prompt_length=512,
            max_completion_length=64,
            learning_rate=1e-3,
        )
    train.update(max_steps=steps, gradient_accumulation_steps=1, save_strategy="no", logging_steps=1, disable_tqdm=True)
    out["train"] = train
    return out


def stand_in(values: dict, work: Path, **sizes) -> dict:
    """swap_in with tiny CPU stand-ins (build_stand_ins): a recipe's code path on a CPU in seconds."""
    return swap_in(values, build_stand_ins(work), work, **sizes)
