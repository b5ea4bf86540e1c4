"""Prefix-shared rows give the plain path's log-probs, losses and gradients (cringe.prefix_sharing)."""

import pytest
import torch

from cringe import chunked as C
from cringe import losses as L
from cringe import prefix_sharing as P
from cringe.data.collate import Collator
from cringe.errors import UserError

VOCAB = 61
PAD = 0
RTOL = 1e-5


def tiny_model(family: str, attention: str, *, window: int | None = 4):
    """A 2-layer random model of `family`; `window` is the sliding window where the family has one (short enough
    that the test sequences cross it)."""
    import transformers as T

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=PAD,
        attn_implementation=attention,
    )
    if family == "llama":
        config, cls = T.LlamaConfig(**common), T.LlamaForCausalLM
    elif family == "qwen2":
        config = T.Qwen2Config(**common, use_sliding_window=True, sliding_window=window, max_window_layers=1)
        cls = T.Qwen2ForCausalLM
    elif family == "qwen3":
        config = T.Qwen3Config(
            **common, head_dim=8, use_sliding_window=True, sliding_window=window, max_window_layers=1
        )
        cls = T.Qwen3ForCausalLM
    elif family == "gemma3":
        config = T.Gemma3TextConfig(
            **common,
            head_dim=8,
            sliding_window=window,
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=8,
        )
        cls = T.Gemma3ForCausalLM
    elif family == "mistral":
        config, cls = T.MistralConfig(**common, sliding_window=window), T.MistralForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    return cls(config).float()


def pair_rows(n: int = 3, seed: int = 0) -> list[dict]:
    """Pairs of different prompt and answer lengths (so rows pad differently) with distinct answers."""
    g = torch.Generator().manual_seed(seed)

    def tokens(low, high):
        length = int(torch.randint(low, high, (), generator=g))
        return torch.randint(1, VOCAB, (length,), generator=g).tolist()

    return [{"prompt_ids": tokens(3, 10), "completion_ids": [tokens(1, 8), tokens(1, 8)]} for _ in range(n)]


def plain_logits(model, rows):
    """The trainer's plain path: 2B rows (chosen first), one forward; logits [2B, T-1, V], labels [2B, T-1]."""
    batch = Collator(pad_token_id=PAD)(rows)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return logits[:, :-1], batch["labels"][:, 1:]


def plain_hidden(model, rows):
    """The trainer's chunked path (`_forward_hidden`): hidden [N, D], targets [N], seq_index [N]."""
    batch = Collator(pad_token_id=PAD)(rows)
    hidden, targets, mask = C.completion_hidden(
        model, model.get_decoder(), batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]
    )
    return hidden, targets, C.row_of_position(mask)


def shared_batch(rows, pack):
    return P.build_shared_rows(rows, PAD, pack=pack, max_row_tokens=40 if pack else None)


def token_logps(logits, labels):
    """Per-token log-probs of the counted tokens, row-major: [N]."""
    counted = labels != L.IGNORE_INDEX
    return L.token_logps(logits, labels)[counted]


def grads_of(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(shared, plain):
    assert shared.keys() == plain.keys()
    for name, g in plain.items():
        error = (shared[name] - g).norm()
        assert error <= RTOL * g.norm() + 1e-12, f"{name}: |diff| {error:.3g} vs |grad| {g.norm():.3g}"


FAMILIES = ["llama", "qwen2", "qwen3", "gemma3", "mistral"]


@pytest.mark.parametrize("pack", [False, True], ids=["row-per-pair", "packed"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_rows_equal_the_plain_path(family, attention, pack):
    model = tiny_model(family, attention)
    assert P.can_share_prefix(model) == (True, "ok")
    rows = pair_rows(3, seed=FAMILIES.index(family))
    batch = shared_batch(rows, pack)
    if pack:
        assert batch["input_ids"].shape[0] < len(rows)  # at least one row holds two pairs or more
    b = len(rows)

    # per-token and per-sequence log-probs, chosen then rejected
    plain_z, plain_y = plain_logits(model, rows)
    shared_z, shared_y = P.answer_logits(model, batch)
    assert shared_z.shape[0] == plain_z.shape[0] == 2 * b
    torch.testing.assert_close(token_logps(shared_z, shared_y), token_logps(plain_z, plain_y), rtol=RTOL, atol=1e-6)
    plain_seq, plain_n = L.sequence_logps(plain_z, plain_y)
    shared_seq, shared_n = L.sequence_logps(shared_z, shared_y)
    torch.testing.assert_close(shared_seq, plain_seq, rtol=RTOL, atol=1e-5)
    assert torch.equal(shared_n, plain_n)

    # the losses on logits, as the registry's plain implementations call them, and their gradients
    ref = plain_seq.detach() + torch.linspace(-1, 1, 2 * b)

    def dpo(logits_fn):
        def loss():
            z, y = logits_fn()
            policy, _ = L.sequence_logps(z, y)
            return L.dpo_loss(policy[:b], policy[b:], ref[:b], ref[b:], beta=0.1)[0].mean()

        return loss

    def cringe(logits_fn):
        def loss():
            z, y = logits_fn()
            g = torch.Generator().manual_seed(7)
            return L.pairwise_cringe_loss(z[:b], y[:b], z[b:], y[b:], alpha=0.5, margin=1.0, generator=g).loss

        return loss

    for objective in (dpo, cringe):
        plain_loss, plain_grads = grads_of(model, objective(lambda: plain_logits(model, rows)))
        shared_loss, shared_grads = grads_of(model, objective(lambda: P.answer_logits(model, batch)))
        torch.testing.assert_close(shared_loss, plain_loss, rtol=RTOL, atol=0)
        assert_grads_close(shared_grads, plain_grads)


@pytest.mark.parametrize("pack", [False, True], ids=["row-per-pair", "packed"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_answer_hidden_feeds_the_chunked_losses(family, pack):
    """The hidden-state output is what the trainer's chunked path builds: same rows, same order, same loss."""
    model = tiny_model(family, "sdpa")
    rows = pair_rows(4, seed=3)
    batch = shared_batch(rows, pack)
    head = model.get_output_embeddings()

    plain_h, plain_t, plain_s = plain_hidden(model, rows)
    shared_h, shared_t, shared_s = P.answer_hidden(model, batch)
    assert torch.equal(shared_t, plain_t) and torch.equal(shared_s, plain_s)
    torch.testing.assert_close(shared_h, plain_h, rtol=RTOL, atol=1e-5)

    def loss(fn):
        def run():
            h, t, s = fn()
            g = torch.Generator().manual_seed(3)
            return C.pairwise_cringe_loss(h, head.weight, head.bias, t, s, len(rows), alpha=0.5, generator=g)[0]

        return run

    plain_loss, plain_grads = grads_of(model, loss(lambda: plain_hidden(model, rows)))
    shared_loss, shared_grads = grads_of(model, loss(lambda: P.answer_hidden(model, batch)))
    torch.testing.assert_close(shared_loss, plain_loss, rtol=RTOL, atol=0)
    assert_grads_close(shared_grads, plain_grads)


def test_cringe_draws_the_same_candidates():
    """The rejected tokens come out in the plain order, so the same uniforms meet the same logits and draw the
    same sampled positives."""
    model = tiny_model("qwen3", "sdpa")
    rows = pair_rows(4, seed=5)
    b = len(rows)
    with torch.no_grad():
        plain_z, plain_y = plain_logits(model, rows)
        shared_z, shared_y = P.answer_logits(model, P.build_shared_rows(rows, PAD, pack=True))
    picks = []
    for z, y in ((plain_z[b:], plain_y[b:]), (shared_z[b:], shared_y[b:])):
        counted = y != L.IGNORE_INDEX
        g = torch.Generator().manual_seed(11)
        picks.append(L.sample_cringe_positives(z[counted], y[counted], k=3, generator=g))
    assert picks[0].numel() == sum(len(r["completion_ids"][1]) for r in rows)
    assert torch.equal(picks[0], picks[1])


def test_position_ids_without_the_mask_hide_the_prompt_from_the_rejected_answer():
    """The trap the explicit mask avoids: transformers reads the jump back in position ids as a new packed sequence.
    The mask is honoured: with it the rejected log-probs are the plain ones, without it they are not."""
    model = tiny_model("llama", "sdpa")
    rows = pair_rows(1, seed=2)
    batch = P.build_shared_rows(rows, PAD)
    plain_z, plain_y = plain_logits(model, rows)
    with torch.no_grad():
        unmasked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        plain = token_logps(plain_z, plain_y)
    row, col = batch["answer_index"].unbind(-1)
    z = unmasked[row, col]
    without = L.token_logps(z, batch["answer_targets"])
    shared = token_logps(*P.answer_logits(model, batch))
    rejected = batch["seq_index"] >= 1
    torch.testing.assert_close(shared, plain, rtol=RTOL, atol=1e-6)
    assert (without[rejected] - plain[rejected]).abs().max() > 1e-3


def test_the_window_is_applied():
    """A window shorter than the sequence changes the result, so the sliding-window parity above is not vacuous."""
    rows = pair_rows(2, seed=4)
    results = []
    for window in (4, 4096):
        model = tiny_model("gemma3", "eager", window=window)
        with torch.no_grad():
            results.append(token_logps(*P.answer_logits(model, P.build_shared_rows(rows, PAD))))
    assert (results[0] - results[1]).abs().max() > 1e-3


def test_rows_layout():
    rows = [
        {"prompt_ids": [5, 6, 7], "completion_ids": [[8, 9], [10, 11, 12]]},
        {"prompt_ids": [20], "completion_ids": [[21], [22]]},
    ]
    batch = P.build_shared_rows(rows, PAD, pack=True)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 20, 21, 22]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 1]]
    # chosen of pair 0, chosen of pair 1, rejected of pair 0, rejected of pair 1
    assert batch["answer_targets"].tolist() == [8, 9, 21, 10, 11, 12, 22]
    assert batch["seq_index"].tolist() == [0, 0, 1, 2, 2, 2, 3]
    # the label shift: both answers' first tokens are predicted from the prompt's last position
    assert batch["answer_index"][:, 1].tolist() == [2, 3, 8, 2, 5, 6, 8]
    allowed = P.allowed_attention(batch)[0]
    assert not allowed[5:8, 3:5].any()  # rejected never sees chosen
    assert allowed[5:8, 0:3].all()  # but sees the whole prompt
    assert not allowed[8:, :8].any()  # nor does the next pair see the first
    mask = P.additive_mask(allowed[None], torch.float32)
    assert mask.shape == (1, 1, 11, 11) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}

    padded = P.build_shared_rows(rows, PAD)
    assert padded["input_ids"].tolist()[1] == [20, 21, 22] + [PAD] * 5
    assert P.allowed_attention(padded)[1, 3:].equal(torch.eye(8, dtype=torch.bool)[3:])  # padding sees itself only


def test_bad_rows_are_named():
    with pytest.raises(UserError, match="row 1: prompt_ids is empty"):
        P.build_shared_rows(
            [{"prompt_ids": [1], "completion_ids": [[2], [3]]}, {"prompt_ids": [], "completion_ids": [[2], [3]]}], PAD
        )
    with pytest.raises(UserError, match="row 0: completion_ids"):
        P.build_shared_rows([{"prompt_ids": [1], "completion_ids": [[2]]}], PAD)


def test_models_that_cannot_share_say_why():
    model = tiny_model("llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    ok, reason = P.can_share_prefix(model)
    assert not ok and "flash_attention_2" in reason

    import transformers as T

    config = T.Qwen3NextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["linear_attention", "full_attention"],
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        attn_implementation="sdpa",
    )
    ok, reason = P.can_share_prefix(T.Qwen3NextForCausalLM(config))
    assert not ok and ("linear" in reason or "recurrent" in reason)
