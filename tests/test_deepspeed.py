"""DeepSpeed ZeRO-2 and ZeRO-3 for real, on 2 CPU processes (gloo; DS_ACCELERATOR=cpu): `cringe train` under the
shipped accelerate configs trains as one process does. `make test-slow` installs DeepSpeed (DS_BUILD_OPS=0: pure
Python; its first launch JIT-builds a shared-memory op, about a minute)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "--config",
    str(ROOT / "examples" / "train_tiny.yaml"),
    "--use_cpu",
    "true",
    "--logging_steps",
    "3",
    "--disable_tqdm",
    "true",
    "--dataloader_num_workers",
    "0",
]


def cpu_config(tmp_path, stage: int) -> Path:
    """The shipped config, as on a GPU node, set to 2 CPU processes without mixed precision."""
    config = yaml.safe_load((ROOT / "accelerate_configs" / f"deepspeed_zero{stage}.yaml").read_text())
    config.update(num_processes=2, use_cpu=True, mixed_precision="no")
    path = tmp_path / f"zero{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(tmp_path, name, launcher=(), extra=()):
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CRINGE_CACHE": str(tmp_path / "cache"),
    }
    out_dir = tmp_path / name
    command = [*(launcher or [sys.executable]), "-m", "cringe", "train", *COMMON, "--output_dir", str(out_dir), *extra]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return result, out_dir


def launcher(tmp_path, stage):
    from cringe.loop.processes import launch_command

    return launch_command({"config_file": str(cpu_config(tmp_path, stage))})[:-2]


def losses(out_dir):
    return {r["step"]: r["loss"] for r in json.loads((out_dir / "train_log.json").read_text()) if "loss" in r}


def weights(out_dir):
    from safetensors.torch import load_file

    return load_file(out_dir / "model.safetensors")


def test_zero2_and_zero3_train_as_one_process_does(tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail("deepspeed is not installed: run `make test-slow` (it installs it with DS_BUILD_OPS=0)")
    plain, plain_dir = train(tmp_path, "plain", extra=["--per_device_train_batch_size", "8"])
    assert plain.returncode == 0, plain.stderr[-3000:]
    reference = weights(plain_dir)
    for stage, tolerance in ((2, 1e-5), (3, 1e-4)):
        run, out_dir = train(
            tmp_path, f"zero{stage}", launcher(tmp_path, stage), ["--per_device_train_batch_size", "4"]
        )
        assert run.returncode == 0, run.stderr[-3000:]
        # Evidence that the engine ran: ZeRO-2 saves its consolidated state dict, tied head included (written
        # once by cringe.models); ZeRO-3 partitions the LM head, so the chunked loss steps aside.
        evidence = (
            "saved the tied lm_head.weight once"
            if stage == 2
            else "chunked loss off, the plain path is used: the LM head is partitioned by DeepSpeed ZeRO-3"
        )
        assert evidence in run.stderr, run.stderr[-2000:]
        for step, loss in losses(plain_dir).items():
            assert losses(out_dir)[step] == pytest.approx(loss, abs=2e-3), (stage, step)
        trained = weights(out_dir)
        assert sorted(trained) == sorted(reference), stage  # the same keys: a tied head saved once
        largest = max((trained[k].float() - reference[k].float()).abs().max().item() for k in reference)
        assert largest < tolerance, (stage, largest)
    refused, _ = train(
        tmp_path,
        "zero3-chunked",
        launcher(tmp_path, 3),
        ["--per_device_train_batch_size", "4", "--chunked_loss", "true"],
    )
    assert refused.returncode != 0
    assert "cringe train: error: chunked_loss:" in refused.stderr
