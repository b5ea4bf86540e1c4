"""Prefix sharing through CringeTrainer: a shared run trains exactly like the plain one (loss, per-pair log-probs,
weights), with every path it composes with; `auto` picks it for the pairwise losses only, and a model that cannot
take it falls back with one log line."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from cringe import losses as L
from cringe import prefix_sharing as P
from cringe.config import make_parser, parse
from cringe.errors import UserError
from cringe.loop.config import load_config
from cringe.loop.run import IterativeRun
from cringe.models import build_tiny_model
from cringe.trainer import CringeConfig, CringeTrainer

from .conftest import pair_rows
from .test_trainer import uneven_rows

RTOL = 1e-5


def config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        # SGD: Adam's normalisation would blow float noise in near-zero gradients up to a full step.
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
    )
    base.update(kw)
    return CringeConfig(**base)


def flat(named) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for _, p in named])


def train(tmp_path, tokenizer, share: bool, *, peft_config=None, **kw):
    """One short run; returns (the trainer, the weights' update, the logged history, the Cringe candidates drawn)."""
    model = build_tiny_model(tokenizer)
    trainer = CringeTrainer(
        model=model,
        args=config(tmp_path, prefix_sharing=share, **kw),
        train_dataset=uneven_rows(),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    assert trainer.share_prefix == share
    assert P.is_shared_batch(trainer.data_collator(trainer.train_dataset.rows[:2])) == share

    def trained(m):
        return [(n, p) for n, p in m.named_parameters() if p.requires_grad]

    start = flat(trained(trainer.model)).clone()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, flat(trained(trainer.model)) - start, logs


def assert_same_run(shared, plain, keys=("loss",)):
    (_, shared_update, shared_logs), (_, plain_update, plain_logs) = shared, plain
    assert plain_update.norm() > 0
    assert (shared_update - plain_update).norm() <= RTOL * plain_update.norm()
    assert len(shared_logs) == len(plain_logs) > 0
    for s, p in zip(shared_logs, plain_logs):
        for key in keys:
            assert s[key] == pytest.approx(p[key], rel=RTOL), key


@pytest.fixture
def record_candidates(monkeypatch):
    """Every Cringe candidate drawn (both implementations call losses.sample_cringe_positives)."""
    drawn = []
    original = L.sample_cringe_positives

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.append(out.clone())
        return out

    monkeypatch.setattr(L, "sample_cringe_positives", recording)
    return drawn


# what the log records per step: the loss, and the per-pair log-probs' means
PAIRWISE_KEYS = ("loss", "gate", "delta", "logps/chosen", "logps/rejected")
DPO_KEYS = ("loss", "rewards/margins", "logps/chosen", "logps/rejected")


@pytest.mark.parametrize(
    "chunked, padding_free", [(True, False), (False, False), (True, True)], ids=["chunked", "logits", "padding-free"]
)
def test_pairwise_cringe_shared_trains_like_plain(tmp_path, tokenizer, record_candidates, chunked, padding_free):
    # margin 100 keeps the gate open, so the sampled candidates shape every step's gradient
    kw = dict(loss="pairwise_cringe", k=3, margin=100.0, chunked_loss=chunked, padding_free=padding_free)
    plain = train(tmp_path, tokenizer, False, **kw)
    plain_candidates = list(record_candidates)
    record_candidates.clear()
    shared = train(tmp_path, tokenizer, True, **kw)
    assert_same_run(shared, plain, PAIRWISE_KEYS)
    rejected_tokens = sum(len(r["completion_ids"][1]) for r in shared[0].train_dataset.rows)
    assert sum(c.numel() for c in plain_candidates) == 2 * rejected_tokens  # two steps over the four pairs
    assert len(record_candidates) == len(plain_candidates)
    for s, p in zip(record_candidates, plain_candidates):
        assert torch.equal(s, p)


@pytest.mark.parametrize(
    "loss, extra",
    [
        ("dpo", dict(precompute_ref_logps=True)),
        ("dpo", dict(precompute_ref_logps=True, chunked_loss=False)),
        ("dpo", dict(padding_free=True)),
        ("ipo", {}),
        ("ipo", dict(chunked_loss=False)),
        ("hinge", {}),
    ],
    ids=["dpo-precomputed", "dpo-precomputed-logits", "dpo-padding-free", "ipo", "ipo-logits", "hinge"],
)
def test_dpo_family_shared_trains_like_plain(tmp_path, tokenizer, loss, extra):
    plain = train(tmp_path, tokenizer, False, loss=loss, **extra)
    shared = train(tmp_path, tokenizer, True, loss=loss, **extra)
    assert_same_run(shared, plain, DPO_KEYS)
    if extra.get("precompute_ref_logps"):
        shared_ref = torch.tensor([r["ref_logps"] for r in shared[0].train_dataset.rows])
        plain_ref = torch.tensor([r["ref_logps"] for r in plain[0].train_dataset.rows])
        assert shared[0].ref_model is None and shared_ref.shape == (4, 2)
        torch.testing.assert_close(shared_ref, plain_ref, rtol=RTOL, atol=0)


def test_lora_shared_trains_like_plain(tmp_path, tokenizer):
    """DPO with LoRA: the reference is the base model with adapters disabled, run on the same shared rows."""
    peft = pytest.importorskip("peft")

    def lora():
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    plain = train(tmp_path, tokenizer, False, loss="dpo", peft_config=lora())
    shared = train(tmp_path, tokenizer, True, loss="dpo", peft_config=lora())
    assert shared[0].ref_model is None  # the adapters-disabled base model is the reference
    assert_same_run(shared, plain, DPO_KEYS)


def test_gradient_checkpointing_shared_trains_like_plain(tmp_path, tokenizer):
    kw = dict(loss="pairwise_cringe", k=3, margin=100.0, gradient_checkpointing=True)
    plain = train(tmp_path, tokenizer, False, **kw)
    shared = train(tmp_path, tokenizer, True, **kw)
    assert_same_run(shared, plain, PAIRWISE_KEYS)


def test_shared_runs_under_bf16_autocast(tmp_path, tokenizer):
    """The float mask is built in the weights' dtype (fp32) while autocast computes attention in bf16: it must
    still train, to bf16's precision."""
    plain = train(tmp_path, tokenizer, False, loss="dpo", bf16=True)
    shared = train(tmp_path, tokenizer, True, loss="dpo", bf16=True)
    (_, shared_update, shared_logs), (_, plain_update, plain_logs) = shared, plain
    assert (shared_update - plain_update).norm() <= 0.05 * plain_update.norm()
    assert shared_logs[-1]["loss"] == pytest.approx(plain_logs[-1]["loss"], rel=1e-2)


@pytest.mark.parametrize(
    "loss, shared",
    [
        ("pairwise_cringe", True),
        ("dpo", True),
        ("ipo", True),
        ("hinge", True),
        ("binary_cringe", False),
        ("sft", False),
    ],
)
def test_auto_shares_for_the_pairwise_losses_only(tmp_path, tokenizer, caplog, loss, shared):
    with caplog.at_level(logging.INFO, logger="cringe.trainer"):
        trainer = CringeTrainer(
            model=build_tiny_model(tokenizer),
            args=config(tmp_path, loss=loss),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
        )
    assert trainer.share_prefix is shared
    assert P.is_shared_batch(trainer.data_collator(trainer.train_dataset.rows[:2])) is shared
    assert not [r for r in caplog.records if "prefix" in r.getMessage()]


@pytest.mark.parametrize("setting, level", [(True, logging.WARNING), (None, logging.INFO)], ids=["on", "auto"])
def test_a_model_that_cannot_share_falls_back_with_one_log_line(tmp_path, tokenizer, caplog, setting, level):
    model = build_tiny_model(tokenizer)
    model.config._attn_implementation = "flash_attention_2"  # reads no 4D mask
    with caplog.at_level(logging.INFO, logger="cringe.trainer"):
        trainer = CringeTrainer(
            model=model,
            args=config(tmp_path, loss="pairwise_cringe", prefix_sharing=setting),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
        )
    assert not trainer.share_prefix
    assert not P.is_shared_batch(trainer.data_collator(trainer.train_dataset.rows[:2]))
    lines = [r for r in caplog.records if "prefix sharing" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == level
    assert "flash_attention_2" in lines[0].getMessage()


def test_a_reference_model_that_cannot_share_falls_back(tmp_path, tokenizer, caplog):
    reference = build_tiny_model(tokenizer)
    reference.config._attn_implementation = "flash_attention_2"
    with caplog.at_level(logging.INFO, logger="cringe.trainer"):
        trainer = CringeTrainer(
            model=build_tiny_model(tokenizer),
            args=config(tmp_path, loss="dpo", prefix_sharing=True),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
            ref_model=reference,
        )
    assert not trainer.share_prefix
    lines = [r.getMessage() for r in caplog.records if "prefix sharing" in r.getMessage()]
    assert len(lines) == 1 and "the reference model" in lines[0]


def test_off_and_single_answer_losses(tmp_path, tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="cringe.trainer"):
        off = CringeTrainer(
            model=build_tiny_model(tokenizer),
            args=config(tmp_path, loss="pairwise_cringe", prefix_sharing=False),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
        )
    assert not off.share_prefix and not caplog.records
    with caplog.at_level(logging.INFO, logger="cringe.trainer"):
        sft = CringeTrainer(
            model=build_tiny_model(tokenizer),
            args=config(tmp_path, loss="sft", prefix_sharing=True),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
        )
    assert not sft.share_prefix
    assert [r.getMessage() for r in caplog.records] == ["prefix_sharing off: loss sft has one answer per row"]


@pytest.mark.parametrize(
    "flags, value", [([], None), (["--prefix_sharing"], True), (["--prefix_sharing", "false"], False)]
)
def test_the_flag(tmp_path, flags, value):
    parser = make_parser(CringeConfig, prog="train")
    (args,) = parse(parser, ["--output_dir", str(tmp_path), "--use_cpu", "true", *flags], 1)
    assert args.prefix_sharing is value


def test_the_loop_records_plain_or_shared_and_old_runs_resume(tmp_path, monkeypatch):
    fixture = Path(__file__).parent / "data" / "state_v2" / "pairwise_cringe_defaults"
    shutil.copy(fixture / "config.yaml", tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_config("config.yaml", []).resolved()["prefix_sharing"] == "shared"
    assert load_config("config.yaml", ["--train.prefix_sharing", "false"]).resolved()["prefix_sharing"] == "plain"
    assert load_config("config.yaml", ["--loss", "sft"]).resolved()["prefix_sharing"] == "plain"

    # a run directory written before the setting existed (trained plain) records no such key, and resumes
    (tmp_path / "run").mkdir()
    shutil.copy(fixture / "state.json", tmp_path / "run" / "state.json")
    assert "prefix_sharing" not in json.loads((fixture / "state.json").read_text())["resolved"]
    IterativeRun(load_config("config.yaml", [])).check_state()

    # a new run records it, and a resume that would train the other way is named
    shutil.rmtree(tmp_path / "run")
    IterativeRun(load_config("config.yaml", [])).check_state()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["resolved"]["prefix_sharing"] == "shared"
    with pytest.raises(UserError, match=r"prefix_sharing \(resolved here: plain, was shared\)"):
        IterativeRun(load_config("config.yaml", ["--train.prefix_sharing", "false"])).check_state()
