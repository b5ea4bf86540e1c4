"""optimizer_in_backward: the same training as the ordinary optimiser step, without ever holding all gradients."""

import glob

import pytest
import torch

from cringe.models import build_tiny_model
from cringe.trainer import CringeTrainer

from .test_trainer import config, params, uneven_rows

# Weight decay (two parameter groups) and a warm-up schedule: the per-parameter optimisers must follow both.
COMMON = dict(
    max_steps=3,
    per_device_train_batch_size=2,
    max_grad_norm=0,
    weight_decay=0.1,
    warmup_steps=2,
    lr_scheduler_type="linear",
    learning_rate=1e-2,
)


def train(tmp_path, tokenizer, in_backward, **kw):
    model = build_tiny_model(tokenizer)  # tied embeddings: one parameter, gradients from two places
    args = config(tmp_path, optimizer_in_backward=in_backward, **{**COMMON, **kw})
    trainer = CringeTrainer(model=model, args=args, train_dataset=uneven_rows(), processing_class=tokenizer)
    trainer.train()
    return model, trainer


@pytest.mark.parametrize(
    "loss, optim, chunked",
    [
        ("pairwise_cringe", "adamw_torch", True),
        ("pairwise_cringe", "adamw_torch", False),
        ("dpo", "adamw_torch", True),
        ("sft", "adafactor", True),
        ("pairwise_cringe", "adamw_torch", "checkpointing"),
    ],
)
def test_optimizer_in_backward_trains_exactly_like_the_ordinary_step(tmp_path, tokenizer, loss, optim, chunked):
    # "checkpointing": layers are recomputed inside backward, after later layers were already stepped
    kw = dict(
        loss=loss,
        optim=optim,
        chunked_loss=bool(chunked),
        k=3,
        margin=100.0,
        gradient_checkpointing=chunked == "checkpointing",
    )
    ordinary, _ = train(tmp_path / "a", tokenizer, False, **kw)
    in_backward, trainer = train(tmp_path / "b", tokenizer, True, **kw)
    assert not torch.allclose(params(ordinary), params(build_tiny_model(tokenizer)))
    torch.testing.assert_close(params(in_backward), params(ordinary), atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in in_backward.parameters())
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[0] < lrs[1]  # the warm-up reached the per-parameter optimisers (their result equals the ordinary run)


def test_no_more_than_one_gradient_exists_at_a_time(tmp_path, tokenizer):
    counts = {}
    for in_backward in (False, True):
        model = build_tiny_model(tokenizer)
        seen = []
        for p in model.parameters():  # registered before the optimiser's hooks, so it runs first
            p.register_post_accumulate_grad_hook(
                lambda _: seen.append(sum(q.grad is not None for q in model.parameters()))  # noqa: B023 (this iteration's model)
            )
        args = config(tmp_path, optimizer_in_backward=in_backward, **{**COMMON, "max_steps": 1})
        CringeTrainer(model=model, args=args, train_dataset=uneven_rows(), processing_class=tokenizer).train()
        counts[in_backward] = max(seen)
    assert counts[False] == len(list(build_tiny_model(tokenizer).parameters()))
    assert counts[True] == 1


def test_resume_restores_every_per_parameter_state(tmp_path, tokenizer):
    # A constant schedule: the 2-step run that writes the checkpoint would otherwise have decayed to zero.
    kw = dict(
        loss="pairwise_cringe",
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        warmup_steps=0,
        lr_scheduler_type="constant",
    )
    full, _ = train(tmp_path / "a", tokenizer, True, **kw)
    train(tmp_path / "b", tokenizer, True, **{**kw, "max_steps": 2})
    checkpoint = glob.glob(str(tmp_path / "b" / "out" / "checkpoint-2"))[0]
    resumed = build_tiny_model(tokenizer)
    trainer = CringeTrainer(
        model=resumed,
        args=config(tmp_path / "b", optimizer_in_backward=True, **{**COMMON, **kw}),
        train_dataset=uneven_rows(),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    torch.testing.assert_close(params(resumed), params(full), atol=1e-6, rtol=1e-5)
    # Without the saved Adam moments the resumed run would differ: check that it would.
    fresh = build_tiny_model(tokenizer)
    trainer = CringeTrainer(
        model=fresh,
        args=config(tmp_path / "b", optimizer_in_backward=True, **{**COMMON, **kw}),
        train_dataset=uneven_rows(),
        processing_class=tokenizer,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    trainer.optimizer.load_state_dict = lambda state: None  # drop the saved state
    trainer.train(resume_from_checkpoint=checkpoint)
    assert not torch.allclose(params(fresh), params(full), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({}, "max_grad_norm=0"),  # the default max_grad_norm is 1.0
        ({"max_grad_norm": 0, "gradient_accumulation_steps": 2}, "gradient_accumulation_steps=1"),
    ],
)
def test_settings_that_need_every_gradient_are_refused(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, optimizer_in_backward=True, **kw)
