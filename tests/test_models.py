"""Model specs and saving: a trained model (LoRA merged) reloads with transformers, in safetensors, with a card."""

import json

import pytest
import torch

from cringe.models import build_tiny_model, save_for_inference
from cringe.trainer import CringeConfig, CringeTrainer

from .conftest import pair_rows


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def training_args(tmp_path, **kw):
    return CringeConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        **kw,
    )


def test_lora_model_is_saved_merged_with_adapters_and_a_card(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = build_tiny_model(tokenizer)
    start = params(model).clone()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = CringeTrainer(
        model=model,
        args=training_args(tmp_path, loss="dpo", beta=0.2),
        train_dataset=pair_rows(8),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    out = tmp_path / "merged"
    save_for_inference(trainer, str(out), base_model="tiny-random-llama", data="pairs.jsonl")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.allclose(params(loaded), start)
    assert (out / "model.safetensors").exists() and not list(out.rglob("*.bin"))  # nothing pickled
    assert json.loads((out / "training_args.json").read_text())["loss"] == "dpo"
    assert (out / "adapter" / "adapter_config.json").exists()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "Loss: `dpo` (beta=0.2" in card
    assert "Data: pairs.jsonl" in card and "3 optimiser steps" in card and "LoRA adapters merged" in card


def test_card_evaluation_section_is_replaced_not_appended(tmp_path):
    from cringe.models import add_evaluation_to_card

    (tmp_path / "README.md").write_text("# m\n\nbody\n")
    add_evaluation_to_card(tmp_path, "| a |\n|---|\n| 1 |")
    add_evaluation_to_card(tmp_path, "| a |\n|---|\n| 2 |")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "| 2 |" in text and "| 1 |" not in text and "body" in text


def test_unknown_dtype_is_a_user_error():
    from cringe.errors import UserError
    from cringe.models import load_model

    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        load_model("tiny-random-llama", dtype="fp8")


def test_a_tied_head_saved_twice_is_saved_once(tmp_path, tokenizer):
    """DeepSpeed ZeRO-2's consolidated state dict holds the tied head as its own tensor (tests/test_deepspeed.py):
    the saved folder must hold the keys a plain save_pretrained writes, and still load."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from cringe.models import _drop_tied_copies, build_tiny_model

    model = build_tiny_model(tokenizer)
    model.save_pretrained(tmp_path)
    plain = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in plain
    doubled = {**plain, "lm_head.weight": plain["model.embed_tokens.weight"].clone()}
    save_file(doubled, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _drop_tied_copies(model, tmp_path)
    assert sorted(load_file(tmp_path / "model.safetensors")) == sorted(plain)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()

    untied = build_tiny_model(tokenizer)
    untied.config.tie_word_embeddings = False
    untied = type(untied)(untied.config)
    untied.save_pretrained(tmp_path / "untied")
    before = sorted(load_file(tmp_path / "untied" / "model.safetensors"))
    _drop_tied_copies(untied, tmp_path / "untied")
    assert "lm_head.weight" in before and sorted(load_file(tmp_path / "untied" / "model.safetensors")) == before
