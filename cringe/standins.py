"""Random-weight stand-ins with the shapes of the models the recipes name (recipes/), built from configs: nothing
is downloaded. Tests use the tiny ones, `bench/gpu/gpu_recipe.py` the full-size ones, and both go through the same
builders, so the GPU dry run exercises what the tests check.

The reward model's tokenizer differs from the policy's on purpose (other ids, a Llama-3-style template that
writes its BOS as text, a tokenizer that also adds one): the recipes' reward models have tokenizers of their own,
and scoring must re-render every conversation with the reward model's template (cringe.rewards.RewardModel).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

# Llama-3.2-1B-Instruct (the 1B recipes' policy), Llama-3.1-8B-Instruct (the 8B recipes'), and
# Skywork-Reward-V2-Qwen3-0.6B / -Llama-3.1-8B (their reward models): the published configs' shapes.
SHAPES = {
    "llama-3.2-1b": dict(
        arch="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        arch="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "qwen3-0.6b": dict(
        arch="qwen3",
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    # for tests and CPU runs: the same architectures, a few thousand parameters
    "tiny-llama": dict(
        arch="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    ),
    "tiny-qwen3": dict(
        arch="qwen3",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
    ),
}

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_reward_tokenizer():
    """A byte-level tokenizer unlike the policy's (cringe.models.build_tiny_tokenizer): Llama-3-style specials
    first (so every id differs), a template that writes `{{ bos_token }}`, and a post-processor that adds BOS to
    plain text, as Llama 3's tokenizer does: the double-BOS trap, on purpose."""

    specials = [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|finetune_right_pad_id|>",
    ]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({ch: len(specials) + i for i, ch in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    core.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def _config(shape: str, tokenizer, **extra):
    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    spec.setdefault("vocab_size", len(tokenizer))
    if spec["vocab_size"] < len(tokenizer):
        raise ValueError(f"{shape}: vocabulary {spec['vocab_size']} smaller than the tokenizer's {len(tokenizer)}")
    cls = LlamaConfig if arch == "llama" else Qwen3Config
    return cls(
        **spec,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_model(
    shape: str, tokenizer, *, classifier: bool = False, dtype=torch.float32, device: str = "cpu", seed: int = 0
):
    """A random causal LM (or a one-logit sequence classifier: a reward model) of `shape` (SHAPES)."""

    config = _config(shape, tokenizer, **({"num_labels": 1} if classifier else {}))
    cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it runs: seconds on a GPU, minutes for 1B on a CPU
        return cls.from_config(config).to(dtype)


def save_model(model, tokenizer, path: Path) -> Path:
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
