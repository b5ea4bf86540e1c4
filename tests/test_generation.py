"""Sampling: N per prompt, seeded, explicit parameters, finish reasons, EOS kept only where generated."""

import torch

from cringe.generation import Sample, SamplingConfig, TransformersSampler, _split_completion
from cringe.models import build_tiny_model


def prompts(tokenizer, n=3):
    return [tokenizer(f"Prompt number {i}:")["input_ids"] for i in range(n)]


def test_n_samples_per_prompt_with_ids_and_reasons(tokenizer, tiny_model):
    samples = TransformersSampler(tiny_model, tokenizer).sample(
        prompts(tokenizer), SamplingConfig(n=4, max_new_tokens=8, batch_size=8), progress=False
    )
    assert len(samples) == 12
    assert sorted({(s.prompt_id, s.sample_id) for s in samples}) == [(p, j) for p in range(3) for j in range(4)]
    for s in samples:
        assert s.finish_reason in ("stop", "length") and s.num_tokens == len(s.completion_ids) <= 8
        if s.finish_reason == "stop":
            assert s.completion_ids[-1] == tokenizer.eos_token_id
        else:
            assert tokenizer.eos_token_id not in s.completion_ids and s.num_tokens == 8
        assert s.completion == tokenizer.decode(s.completion_ids, skip_special_tokens=True)


def test_seeded_and_reproducible(tokenizer, tiny_model):
    sampler = TransformersSampler(tiny_model, tokenizer)

    def run(seed):
        config = SamplingConfig(n=2, max_new_tokens=6, seed=seed)
        return [s.completion_ids for s in sampler.sample(prompts(tokenizer), config, progress=False)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_model_generation_defaults_do_not_leak_in(tokenizer, tiny_model):
    # A model whose own generation config says top_k=1 would sample greedily; our explicit top_k=0 overrides it.
    tiny_model.generation_config.top_k = 1
    tiny_model.generation_config.do_sample = False
    samples = TransformersSampler(tiny_model, tokenizer).sample(
        prompts(tokenizer, 1), SamplingConfig(n=8, max_new_tokens=6), progress=False
    )
    assert len({tuple(s.completion_ids) for s in samples}) > 1


def test_eos_forces_stop_reason(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert _split_completion([5, 6, eos, pad, pad], {eos}, pad) == ([5, 6, eos], "stop")
    assert _split_completion([5, 6, 7], {eos}, pad) == ([5, 6, 7], "length")


def test_sample_round_trips_through_dict():
    s = Sample(prompt_id=1, sample_id=2, prompt_ids=[1, 2], completion_ids=[3, 4], completion="x", finish_reason="stop")
    assert Sample.from_dict(s.to_dict()) == s and s.to_dict()["num_tokens"] == 2


def test_bad_sampling_config_is_refused():
    import pytest

    with pytest.raises(ValueError):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=1.5)
    with pytest.raises(TypeError):
        SamplingConfig(topk=3)


def test_shared_prompt_cache_samples_what_generate_alone_samples(tokenizer, tiny_model):
    """Each prompt's prefill once, its cache repeated for its n samples: in float64 the same tokens, sample for
    sample, as generate's own n-fold prefill, over prompts of different lengths (left padding) and a one-token
    prompt; and fewer token positions through the model."""
    model = tiny_model.double()
    batch = [
        tokenizer("A much longer prompt, with padding for the others:")["input_ids"],
        tokenizer("Short:")["input_ids"],
        [tokenizer.bos_token_id or 1],
    ]
    config = SamplingConfig(n=3, max_new_tokens=7, batch_size=9, seed=4)
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    runs = {}
    for share in (True, False):
        seen.clear()
        samples = TransformersSampler(model, tokenizer, share_prompt_cache=share).sample(batch, config, progress=False)
        runs[share] = ([(s.prompt_id, s.sample_id, s.completion_ids, s.finish_reason) for s in samples], sum(seen))
    hook.remove()
    assert runs[True][0] == runs[False][0]
    assert len({tuple(ids) for _, _, ids, _ in runs[True][0]}) > 3  # sampled, not one repeated answer
    width = max(len(p) for p in batch)
    # the prefill's n-fold repeat is all the difference: (n - 1) x prompts x (width - 1) positions
    assert runs[False][1] - runs[True][1] == (config.n - 1) * len(batch) * (width - 1)


def test_shared_prompt_cache_with_sliding_windows_and_equal_lengths(tokenizer):
    """A sliding window shorter than the prompts (the cache keeps only its last tokens), and a batch of equal
    lengths (generate drops an all-ones attention mask): the same samples both ways."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(
        MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            sliding_window=4,
        )
    ).double()
    config = SamplingConfig(n=3, max_new_tokens=6, batch_size=6, seed=1)
    for batch in (
        [tokenizer("A much longer prompt here:")["input_ids"], tokenizer("Short:")["input_ids"]],
        [tokenizer("Same length")["input_ids"]] * 2,
    ):
        shared, plain = (TransformersSampler(model, tokenizer, share_prompt_cache=share) for share in (True, False))
        assert shared.share_prompt_cache
        assert [s.completion_ids for s in shared.sample(batch, config, progress=False)] == [
            s.completion_ids for s in plain.sample(batch, config, progress=False)
        ]


def test_prompt_cache_is_not_shared_where_it_cannot_be(tokenizer, tiny_model):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    assert TransformersSampler(build_tiny_model(tokenizer), tokenizer).share_prompt_cache
    # generate refuses a cache object beside a cache_implementation from the model's own generation config
    tiny_model.generation_config.cache_implementation = "static"
    assert not TransformersSampler(tiny_model, tokenizer).share_prompt_cache
    # linear-attention layers carry a recurrent state that a repeat along the batch would not copy
    hybrid = Qwen3NextForCausalLM(
        Qwen3NextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            linear_num_value_heads=2,
            linear_num_key_heads=1,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            full_attention_interval=2,
        )
    )
    sampler = TransformersSampler(hybrid, tokenizer)
    assert not sampler.share_prompt_cache
    samples = sampler.sample(
        [tokenizer("A prompt:")["input_ids"]], SamplingConfig(n=2, max_new_tokens=3), progress=False
    )
    assert len(samples) == 2
