"""CringeTrainer: every loss trains, gradient accumulation equals one large batch, reference handling,
resume, LoRA, report_to."""

import glob

import pytest
import torch

from cringe.models import build_tiny_model
from cringe.trainer import CringeConfig, CringeTrainer

from .conftest import pair_rows


def uneven_rows():
    # Different completion lengths, so token-level normalisation matters for gradient accumulation.
    answers = [
        (" yes", " no, not at all"),
        (" great, really great stuff", " bad"),
        (" fine", " awful, awful"),
        (" good", " terrible and long answer"),
    ]
    return [{"prompt": f"Q{i}?", "chosen": c, "rejected": r} for i, (c, r) in enumerate(answers)]


def config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        num_train_epochs=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    base.update(kw)
    return CringeConfig(**base)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss", ["pairwise_cringe", "binary_cringe", "dpo", "ipo", "hinge", "sft"])
def test_every_loss_trains_and_logs(tmp_path, tokenizer, loss):
    model = build_tiny_model(tokenizer)
    trainer = CringeTrainer(
        model=model, args=config(tmp_path, loss=loss), train_dataset=pair_rows(), processing_class=tokenizer
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == (24 if loss == "binary_cringe" else 12)  # binary Cringe sees each pair as two rows
    assert logs[-1]["loss"] < logs[0]["loss"]
    if loss == "pairwise_cringe":
        for key in ("gate", "gate_open", "delta", "logps/chosen", "logps/rejected", "tokens/chosen"):
            assert key in logs[0]
        assert logs[-1]["delta"] > logs[0]["delta"]  # the model learns to prefer the chosen answers
    if loss in ("dpo", "ipo", "hinge"):
        assert logs[-1]["rewards/margins"] > 0


@pytest.mark.parametrize("loss", ["pairwise_cringe", "binary_cringe", "dpo", "sft"])
def test_gradient_accumulation_equals_one_large_batch(tmp_path, tokenizer, loss):
    results = []
    for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
        model = build_tiny_model(tokenizer)
        args = config(
            tmp_path,
            loss=loss,
            k=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0,
        )
        CringeTrainer(model=model, args=args, train_dataset=uneven_rows(), processing_class=tokenizer).train()
        results.append(params(model))
    start = params(build_tiny_model(tokenizer))
    assert not torch.allclose(results[0], start)
    torch.testing.assert_close(results[1], results[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[2], results[0], atol=1e-6, rtol=1e-5)


def test_precomputed_reference_matches_live_reference(tmp_path, tokenizer):
    finals = []
    for precompute in (False, True):
        model = build_tiny_model(tokenizer)
        trainer = CringeTrainer(
            model=model,
            args=config(tmp_path, loss="dpo", precompute_ref_logps=precompute, num_train_epochs=2),
            train_dataset=pair_rows(8),
            processing_class=tokenizer,
        )
        assert (trainer.ref_model is None) == precompute
        if precompute:
            assert all(len(r["ref_logps"]) == 2 for r in trainer.train_dataset.rows)
        trainer.train()
        finals.append(params(model))
    torch.testing.assert_close(finals[0], finals[1], atol=1e-6, rtol=1e-5)


def _live_models(cls) -> int:
    import gc

    gc.collect()
    return sum(type(o) is cls for o in gc.get_objects())


@pytest.mark.parametrize("loss, extra_models", [("pairwise_cringe", 0), ("binary_cringe", 0), ("dpo", 1)])
def test_only_the_dpo_family_keeps_a_reference_model(tmp_path, tokenizer, loss, extra_models):
    from transformers import LlamaForCausalLM

    model = build_tiny_model(tokenizer)
    before = _live_models(LlamaForCausalLM)
    trainer = CringeTrainer(
        model=model, args=config(tmp_path, loss=loss), train_dataset=pair_rows(4), processing_class=tokenizer
    )
    assert _live_models(LlamaForCausalLM) - before == extra_models
    assert (trainer.ref_model is not None) == bool(extra_models)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path, tokenizer):
    kw = dict(
        loss="pairwise_cringe",
        k=3,
        per_device_train_batch_size=2,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        margin=100.0,
        lr_scheduler_type="constant",
    )  # k=3, open gate: samples matter
    full = build_tiny_model(tokenizer)
    CringeTrainer(
        model=full, args=config(tmp_path / "a", **kw), train_dataset=pair_rows(8), processing_class=tokenizer
    ).train()
    first = build_tiny_model(tokenizer)
    CringeTrainer(
        model=first,
        args=config(tmp_path / "b", **dict(kw, max_steps=2)),
        train_dataset=pair_rows(8),
        processing_class=tokenizer,
    ).train()
    resumed = build_tiny_model(tokenizer)
    checkpoint = glob.glob(str(tmp_path / "b" / "out" / "checkpoint-2"))[0]
    CringeTrainer(
        model=resumed, args=config(tmp_path / "b", **kw), train_dataset=pair_rows(8), processing_class=tokenizer
    ).train(resume_from_checkpoint=checkpoint)
    torch.testing.assert_close(params(resumed), params(full), atol=1e-6, rtol=1e-5)


def test_lora_reference_is_the_base_model_with_adapters_disabled(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    from cringe.data import Collator
    from cringe.losses import sequence_logps

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = CringeTrainer(
        model=build_tiny_model(tokenizer),
        args=config(tmp_path, loss="dpo", learning_rate=1e-2),
        train_dataset=pair_rows(8),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    assert [h for h in trainer.state.log_history if "loss" in h][-1]["rewards/margins"] > 0.0
    rows = trainer.train_dataset.rows[:4]
    batch = trainer.data_collator(rows)  # the trainer's own batch (prefix-shared rows by default)
    plain = Collator(tokenizer.pad_token_id)(rows)
    start = build_tiny_model(tokenizer).eval()  # the same seed: the weights the adapters were put on
    with torch.no_grad():
        logits = start(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
        expected, _ = sequence_logps(logits[:, :-1], plain["labels"][:, 1:])
        trained = trainer._sequence_logps(trainer.model, batch)
    torch.testing.assert_close(trainer._reference_logps(batch), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trained, expected, atol=1e-3)  # the adapters did move the policy


def test_report_to_tensorboard_writes_events(tmp_path, tokenizer):
    pytest.importorskip("tensorboard")
    args = config(tmp_path, report_to="tensorboard", max_steps=2)
    CringeTrainer(
        model=build_tiny_model(tokenizer), args=args, train_dataset=pair_rows(4), processing_class=tokenizer
    ).train()
    assert glob.glob(str(tmp_path / "out" / "**" / "events.out.tfevents.*"), recursive=True)


def test_evaluation_reports_loss_and_statistics(tmp_path, tokenizer):
    trainer = CringeTrainer(
        model=build_tiny_model(tokenizer),
        args=config(tmp_path, max_steps=1),
        train_dataset=pair_rows(4),
        eval_dataset=pair_rows(4),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    # The logged gate is sigma((margin - Delta) / tau) of the model's own log-probs, averaged over the pairs.
    from cringe.evaluate import sequence_logprobs

    rows = trainer.eval_dataset.rows
    chosen = sequence_logprobs(trainer.model, rows, tokenizer.pad_token_id)
    rejected = sequence_logprobs(
        trainer.model, [{**r, "completion_ids": r["completion_ids"][1:]} for r in rows], tokenizer.pad_token_id
    )
    delta = torch.tensor(chosen) - torch.tensor(rejected)
    settings = trainer.args.loss_settings
    expected = torch.sigmoid((settings.margin - delta) / settings.temperature).mean().item()
    assert "eval_loss" in metrics
    assert metrics["eval_gate"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss", "kto", "loss must be one of"),
        ("margin_on", "max", "margin_on"),
        ("k", 0, "k must be"),
        ("temperature", 0.0, "temperature"),
        ("beta", -1.0, "beta"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **{field: value})


def test_binary_data_with_a_pairwise_loss_is_refused_before_training(tmp_path, tokenizer):
    rows = [{"prompt": "p", "completion": " c", "label": True}]
    with pytest.raises(ValueError, match="needs pairs"):
        CringeTrainer(
            model=build_tiny_model(tokenizer),
            args=config(tmp_path, loss="dpo"),
            train_dataset=rows,
            processing_class=tokenizer,
        )


@pytest.mark.parametrize("loss", ["pairwise_cringe", "binary_cringe", "dpo", "ipo", "hinge", "sft"])
def test_chunked_loss_trains_exactly_like_the_plain_path(tmp_path, tokenizer, loss):
    finals, logs = [], []
    for chunked in (False, True):
        model = build_tiny_model(tokenizer)
        # SGD: Adam's normalisation would blow float noise in near-zero gradients up to a full step.
        args = config(
            tmp_path,
            loss=loss,
            k=3,
            margin=100.0,
            chunked_loss=chunked,
            chunk_size=7,
            max_steps=3,
            per_device_train_batch_size=4,
            lr_scheduler_type="constant",
            optim="sgd",
            learning_rate=0.5,
        )
        trainer = CringeTrainer(model=model, args=args, train_dataset=uneven_rows(), processing_class=tokenizer)
        trainer.train()
        finals.append(params(model))
        logs.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert not torch.allclose(finals[0], params(build_tiny_model(tokenizer)))
    torch.testing.assert_close(finals[1], finals[0], atol=1e-5, rtol=1e-4)
    assert logs[1] == pytest.approx(logs[0], rel=1e-4)


def test_chunked_loss_with_lora(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    finals = []
    for chunked in (False, True):
        model = build_tiny_model(tokenizer)
        trainer = CringeTrainer(
            model=model,
            args=config(tmp_path, loss="dpo", chunked_loss=chunked, max_steps=2, optim="sgd", learning_rate=0.5),
            train_dataset=uneven_rows(),
            processing_class=tokenizer,
            peft_config=lora,
        )
        trainer.train()
        finals.append(torch.cat([p.detach().flatten() for n, p in trainer.model.named_parameters() if "lora" in n]))
    torch.testing.assert_close(finals[1], finals[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss", ["pairwise_cringe", "binary_cringe", "dpo", "sft"])
def test_padding_free_batches_train_exactly_like_padded_ones(tmp_path, tokenizer, loss):
    finals, logs = [], []
    for padding_free in (False, True):
        model = build_tiny_model(tokenizer)
        args = config(
            tmp_path,
            loss=loss,
            k=3,
            margin=100.0,
            chunked_loss=True,
            padding_free=padding_free,
            max_steps=3,
            per_device_train_batch_size=4,
            lr_scheduler_type="constant",
            optim="sgd",
            learning_rate=0.5,
        )
        trainer = CringeTrainer(model=model, args=args, train_dataset=uneven_rows(), processing_class=tokenizer)
        if padding_free:
            batch = trainer.data_collator(trainer.train_dataset.rows[:2])
            assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        trainer.train()
        finals.append(params(model))
        logs.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    torch.testing.assert_close(finals[1], finals[0], atol=1e-5, rtol=1e-4)
    assert logs[1] == pytest.approx(logs[0], rel=1e-4)


def test_padding_free_needs_the_chunked_loss(tmp_path):
    with pytest.raises(ValueError, match="padding_free needs chunked_loss"):
        config(tmp_path, padding_free=True, chunked_loss=False)


def test_chunked_loss_is_the_default_where_the_model_allows_it(tmp_path, tokenizer):
    trainer = CringeTrainer(
        model=build_tiny_model(tokenizer), args=config(tmp_path), train_dataset=pair_rows(4), processing_class=tokenizer
    )
    assert trainer.use_chunked
    capped = build_tiny_model(tokenizer)
    capped.config.final_logit_softcapping = 30.0  # a non-linear head: the plain path must be used
    trainer = CringeTrainer(model=capped, args=config(tmp_path), train_dataset=pair_rows(4), processing_class=tokenizer)
    assert not trainer.use_chunked
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        CringeTrainer(
            model=capped,
            args=config(tmp_path, chunked_loss=True),
            train_dataset=pair_rows(4),
            processing_class=tokenizer,
        )
