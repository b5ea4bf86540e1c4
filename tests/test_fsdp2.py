"""The chunked loss under sharding: FSDP2 (torch's fully_shard, 2 CPU processes over gloo) against the unsharded
model in one process; ZeRO-3 and FSDP1 detected and sent to the plain path with a warning, never silently wrong."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cringe.errors import UserError
from cringe.trainer import CringeConfig, CringeTrainer, whole_head_weight

from .conftest import pair_rows


def run_fsdp2_worker(tmp_path, *variant: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp2.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(Path(__file__).parent / "fsdp2_worker.py"),
            str(out),
            *variant,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # whether the cases finished says if a failure came in the computation or only in the teardown
    assert result.returncode == 0, (f"results written: {out.exists()}", result.stderr[-3000:])
    return json.loads(out.read_text())


def assert_sharded_equals_unsharded(cases: dict) -> None:
    for name, c in cases.items():
        assert c["sharded"], f"{name}: the parameters were not DTensors: nothing was sharded"
        assert c["loss_diff"] < 1e-5 and c["grad_diff"] < 1e-5, (name, c)  # gradients up to ~0.15


def test_fsdp2_sharded_model_gives_the_unsharded_loss_and_gradients(tmp_path):
    cases = run_fsdp2_worker(tmp_path)
    # the chunked loss met the head both whole (root kept unsharded) and as a sharded DTensor (root resharded)
    assert cases.pop("head_types_seen_by_the_chunked_loss") == ["Parameter", "DTensor", "Parameter", "DTensor"]
    assert len(cases) == 8
    assert_sharded_equals_unsharded(cases)


@pytest.mark.slow
def test_fsdp2_prefix_shared_rows_give_the_unsharded_plain_loss_and_gradients(tmp_path):
    """Each rank's pairs as prefix-shared rows (cringe.prefix_sharing) on the sharded model, against the unsharded
    model's plain rows over all pairs."""
    cases = run_fsdp2_worker(tmp_path, "shared")
    assert cases.pop("head_types_seen_by_the_chunked_loss") == ["Parameter", "DTensor", "Parameter", "DTensor"]
    assert sorted(cases) == sorted(
        f"shared, {tied} head, root {root} after forward"
        for tied in ("tied", "untied")
        for root in ("kept whole", "resharded")
    )
    assert_sharded_equals_unsharded(cases)


def test_a_head_that_stays_partitioned_is_refused():
    head = torch.nn.Linear(4, 8, bias=False)
    head.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside its gathered forward
    head.weight.ds_id = 7
    with pytest.raises(UserError, match="sharded .* set chunked_loss=False"):
        whole_head_weight(torch.nn.Sequential(head), head)


def fake_engine(**state):
    return SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(**state)))


@pytest.mark.parametrize(
    "engine, refused",
    [
        (dict(is_deepspeed_enabled=True, state=dict(deepspeed_plugin=SimpleNamespace(zero_stage=3))), True),
        (dict(is_deepspeed_enabled=True, state=dict(deepspeed_plugin=SimpleNamespace(zero_stage=2))), False),
        (dict(is_fsdp_enabled=True, state=dict(fsdp_plugin=SimpleNamespace(fsdp_version=1))), True),
        (dict(is_fsdp_enabled=True, state=dict(fsdp_plugin=SimpleNamespace(fsdp_version=2))), False),
    ],
)
def test_engines_that_shard_the_head_are_detected(engine, refused):
    trainer = fake_engine(**engine["state"])
    for key in ("is_deepspeed_enabled", "is_fsdp_enabled"):
        setattr(trainer, key, engine.get(key, False))
    assert (CringeTrainer._sharded_head_engine(trainer) is not None) == refused


def test_a_sharded_head_engine_falls_back_to_the_plain_path_loudly(tmp_path, tokenizer, monkeypatch, caplog):
    from cringe.models import build_tiny_model

    monkeypatch.setattr(CringeTrainer, "_sharded_head_engine", lambda self: "the LM head is partitioned (test)")

    def args(**kw):
        return CringeConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1, **kw)

    with caplog.at_level(logging.WARNING, logger="cringe.trainer"):
        trainer = CringeTrainer(
            model=build_tiny_model(tokenizer), args=args(), train_dataset=pair_rows(4), processing_class=tokenizer
        )
    assert not trainer.use_chunked and "chunked loss off, the plain path is used" in caplog.text
    with pytest.raises(UserError, match="chunked_loss: the LM head is partitioned"):
        CringeTrainer(
            model=build_tiny_model(tokenizer),
            args=args(chunked_loss=True),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
        )
