"""Many processes: each round's training under `accelerate launch`, data-parallel sampling, token-id rows."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from cringe.testbeds.toy import prompts as toy_prompts

ROOT = Path(__file__).resolve().parents[1]


def test_launch_command_passes_the_users_settings_and_picks_a_port():
    from cringe.loop.processes import launch_command

    command = launch_command({"config_file": "fsdp.yaml", "num_processes": 4, "sample": True, "same_network": True})
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and command[-2:] == ["-m", "cringe"]
    flags = command[3:-2]
    assert flags[:4] == ["--config_file", "fsdp.yaml", "--num_processes", "4"] and "--same_network" in flags
    assert "--sample" not in flags and int(flags[flags.index("--main_process_port") + 1]) > 0
    assert "--main_process_port" not in launch_command({"num_machines": 2, "machine_rank": 0})


def test_data_parallel_sampling_writes_what_one_process_writes(tmp_path, tokenizer, tiny_model):
    """Two ranks split the shards (each seeded from its own prompt positions); rank 0 joins them."""
    from cringe.data import load_prompts
    from cringe.generation import SamplingConfig, TransformersSampler
    from cringe.loop.stages import sample_to_file

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(7)))
    prompts = load_prompts(str(path), tokenizer)
    sampling = SamplingConfig(n=2, max_new_tokens=5, batch_size=4, seed=3)
    sampler = TransformersSampler(tiny_model, tokenizer)
    single = sample_to_file(prompts, sampling, tmp_path / "one.jsonl", lambda: sampler, shard_prompts=2)
    assert (
        sample_to_file(prompts, sampling, tmp_path / "two.jsonl", lambda: sampler, shard_prompts=2, rank=1, world=2)
        == []
    )
    shards = sorted(p.name for p in (tmp_path / ".two-shards").iterdir())
    assert shards == ["shard-0000002.jsonl", "shard-0000006.jsonl"]  # rank 1: shards 1 and 3
    joined = sample_to_file(
        prompts, sampling, tmp_path / "two.jsonl", lambda: sampler, shard_prompts=2, rank=0, world=2
    )
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text() and joined == single


def test_cringe_train_takes_the_loops_token_id_rows(tmp_path, tokenizer):
    from cringe.cli import main

    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [
        {
            "row": i,
            "prompt_ids": ids(f"Q{i}?"),
            "label": None,
            "completion_ids": [ids(" yes") + [tokenizer.eos_token_id], ids(" no!") + [tokenizer.eos_token_id]],
        }
        for i in range(8)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "model"
    main(
        [
            "train",
            "--dataset",
            str(data),
            "--output_dir",
            str(tmp_path / "ckpt"),
            "--save_model_to",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert (out / "model.safetensors").exists() and json.loads((out / "train_log.json").read_text())[-1]["step"] == 2


@pytest.mark.slow
def test_two_process_iterate_matches_the_in_process_run(tmp_path):
    """accelerate: {config_file: cpu_2proc.yaml, num_processes: 2, sample: true}, per-device batch 4, against one
    process with batch 8: the same samples (data-parallel sampling), and each round's model within tolerance.
    8 prompts give 8 pairs, so every step's global batch is the whole round, split evenly (neither the order of
    rows nor accelerate's padding of short batches can differ)."""
    from safetensors.torch import load_file

    from cringe.loop.run import IterativeRun, load_config

    from .test_loop import write_config

    env_backup = dict(os.environ)
    os.environ.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    try:
        common = {
            "optim": "sgd",
            "learning_rate": 0.5,
            "max_grad_norm": 0.0,
            "max_steps": 2,
            "use_cpu": True,
            "disable_tqdm": True,
            "save_strategy": "no",
            "logging_steps": 1,
            "dataloader_num_workers": 0,
            # fp32: on a CPU with native bf16 the loop trains under bf16 autocast by default, whose weight gradients
            # are rounded to bf16 once per process's half batch, and once per whole batch in one process: up to
            # 5.3e-5 apart after a step at lr 0.5 (Xeon with AMX), against 6e-8 in fp32 (the all-reduce's order).
            "bf16": False,
        }
        reward = {"type": "callable", "function": "cringe.testbeds.toy:mean_codepoint"}
        single = write_config(
            tmp_path,
            tmp_path / "single",
            eval_prompts=None,
            max_prompts=8,
            reward=reward,
            train={**common, "per_device_train_batch_size": 8},
        )
        launched = write_config(
            tmp_path,
            tmp_path / "launched",
            eval_prompts=None,
            max_prompts=8,
            reward=reward,
            train={**common, "per_device_train_batch_size": 4},
            accelerate={
                "config_file": str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                "num_processes": 2,
                "sample": True,
            },
        )
        IterativeRun(load_config(str(single), [])).run()
        IterativeRun(load_config(str(launched), [])).run()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    largest = 0.0
    for k in (1, 2):
        # 8 pairs, one global batch of 8 a step: accelerate pads a rank's short batch with repeated rows
        # (even_batches), which a run whose row count does not fill the batches would not match.
        assert len((tmp_path / "single" / f"round-{k}" / "pairs.jsonl").read_text().splitlines()) == 8
        for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl"):
            assert (tmp_path / "launched" / f"round-{k}" / name).read_text() == (
                tmp_path / "single" / f"round-{k}" / name
            ).read_text(), (k, name)
        a = load_file(str(tmp_path / "single" / f"round-{k}" / "model" / "model.safetensors"))
        b = load_file(str(tmp_path / "launched" / f"round-{k}" / "model" / "model.safetensors"))
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"round {k}: {m}")
            largest = max(largest, (b[key] - a[key]).abs().max().item())
    print(f"largest weight difference, 2 processes vs 1: {largest:.2e}")
