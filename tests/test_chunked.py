"""The fused, token-chunked objectives equal the plain ones in `losses.py`: values and gradients (hidden states,
head weight, bias), the same sampled positives under the same uniforms, fp32 within 1e-5, gradcheck in float64."""

import pytest
import torch

from cringe import chunked as C
from cringe import losses as L

IGNORE = L.IGNORE_INDEX


def setup(b=3, t=7, d=5, v=23, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * b, t, d, generator=g, dtype=dtype)
    weight = torch.randn(v, d, generator=g, dtype=dtype)
    b_ = torch.randn(v, generator=g, dtype=dtype) if bias else None
    labels = torch.randint(0, v, (2 * b, t), generator=g)
    labels[0, :3] = IGNORE  # prompt
    labels[min(b + 1, 2 * b - 1), -2:] = IGNORE  # padding
    labels[-1, :1] = IGNORE
    return hidden, weight, b_, labels


def leaves(*tensors):
    return [x.detach().clone().requires_grad_() if x is not None else None for x in tensors]


def flat(hidden, labels):
    mask = labels != IGNORE
    seq_index = torch.arange(labels.shape[0]).unsqueeze(-1).expand_as(labels)[mask]
    return hidden[mask], labels[mask], seq_index


def grads(*tensors):
    return [x.grad for x in tensors if x is not None]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [2, 5, 1024])
def test_sft_parity(bias, chunk):
    hidden, weight, b, labels = setup(bias=bias)
    h1, w1, b1 = leaves(hidden, weight, b)
    ref = L.sft_loss(torch.nn.functional.linear(h1, w1, b1), labels).loss
    ref.backward()
    h2, w2, b2 = leaves(hidden, weight, b)
    x, y, _ = flat(h2, labels)
    got = C.sft_loss(x, w2, b2, y, chunk_size=chunk)
    got.backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads(h2, w2, b2), grads(h1, w1, b1)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("detach_gate", [True, False])
@pytest.mark.parametrize("margin_on", ["sum", "mean"])
@pytest.mark.parametrize("detach_positive", [False, True])
@pytest.mark.parametrize("chunk", [3, 1024])
def test_pairwise_cringe_parity(detach_gate, margin_on, detach_positive, chunk):
    b = 3
    hidden, weight, bias, labels = setup(b=b)
    n_rej = int((labels[b:] != IGNORE).sum())
    uniforms = torch.rand(n_rej, generator=torch.Generator().manual_seed(9))
    kw = dict(
        alpha=0.7,
        k=3,
        margin=2.0,
        temperature=4.0,
        margin_on=margin_on,
        detach_gate=detach_gate,
        detach_positive=detach_positive,
        uniforms=uniforms,
    )
    h1, w1, b1 = leaves(hidden, weight, bias)
    logits = torch.nn.functional.linear(h1, w1, b1)
    ref = L.pairwise_cringe_loss(logits[:b], labels[:b], logits[b:], labels[b:], **kw)
    ref.loss.backward()
    h2, w2, b2 = leaves(hidden, weight, bias)
    x, y, seq = flat(h2, labels)
    got, stats = C.pairwise_cringe_loss(x, w2, b2, y, seq, b, chunk_size=chunk, **kw)
    got.backward()
    torch.testing.assert_close(got, ref.loss, atol=1e-5, rtol=1e-5)
    for key in ("gate", "delta", "chosen_logps", "rejected_logps"):
        torch.testing.assert_close(stats[key], ref.stats[key].float(), atol=1e-5, rtol=1e-5)
    for a, r in zip(grads(h2, w2, b2), grads(h1, w1, b1)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_pairwise_cringe_samples_the_same_positives_as_the_plain_path():
    b, k = 2, 4
    hidden, weight, bias, labels = setup(b=b, v=40)
    mask = labels[b:] != IGNORE
    uniforms = torch.rand(int(mask.sum()), generator=torch.Generator().manual_seed(3))
    logits = torch.nn.functional.linear(hidden, weight, bias)[b:][mask]
    plain = L.sample_cringe_positives(logits, labels[b:][mask], k, uniforms=uniforms)
    x, y, seq = flat(hidden, labels)
    rejected = seq >= b
    _, (j, _, _) = C.head_pass(x[rejected], weight, bias, y[rejected], k=k, uniforms=uniforms, chunk_size=3)
    assert torch.equal(j, plain)


@pytest.mark.parametrize("detach_positive", [False, True])
def test_binary_cringe_parity(detach_positive):
    hidden, weight, bias, labels = setup(b=2)
    positive = torch.tensor([True, False, False, True])
    n_neg = int((labels[~positive] != IGNORE).sum())
    uniforms = torch.rand(n_neg, generator=torch.Generator().manual_seed(1))
    h1, w1, b1 = leaves(hidden, weight, bias)
    ref = L.binary_cringe_loss(
        torch.nn.functional.linear(h1, w1, b1),
        labels,
        positive,
        alpha=0.4,
        k=2,
        detach_positive=detach_positive,
        uniforms=uniforms,
    ).loss
    ref.backward()
    h2, w2, b2 = leaves(hidden, weight, bias)
    # The plain path orders negative tokens by negative sequence, then position: match that order.
    order = torch.cat([(~positive).nonzero().squeeze(-1), positive.nonzero().squeeze(-1)])
    x, y, seq = flat(h2[order], labels[order])
    token_positive = positive[order][seq]
    got = C.binary_cringe_loss(
        x, w2, b2, y, token_positive, alpha=0.4, k=2, detach_positive=detach_positive, uniforms=uniforms, chunk_size=4
    )
    got.backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads(h2, w2, b2), grads(h1, w1, b1)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_type, length_average", [("sigmoid", False), ("hinge", False), ("ipo", True)])
def test_dpo_family_parity(loss_type, length_average):
    b = 3
    hidden, weight, bias, labels = setup(b=b)
    ref_logps = torch.randn(2 * b, generator=torch.Generator().manual_seed(4)) * 5 - 20
    h1, w1, b1 = leaves(hidden, weight, bias)
    total, count = L.sequence_logps(torch.nn.functional.linear(h1, w1, b1), labels)
    policy = total / count if length_average else total
    losses, _, _ = L.dpo_loss(policy[:b], policy[b:], ref_logps[:b], ref_logps[b:], 0.2, loss_type)
    ref = losses.sum() / b
    ref.backward()
    h2, w2, b2 = leaves(hidden, weight, bias)
    x, y, seq = flat(h2, labels)
    got, _ = C.dpo_family_loss(
        x, w2, b2, y, seq, b, ref_logps, beta=0.2, loss_type=loss_type, length_average=length_average, chunk_size=4
    )
    got.backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads(h2, w2, b2), grads(h1, w1, b1)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_custom_functions_gradcheck_float64():
    hidden, weight, bias, labels = setup(b=1, t=3, d=3, v=6, dtype=torch.float64)
    x, y, seq = flat(hidden, labels)
    a = torch.rand(y.numel(), dtype=torch.float64)

    def fused(h, w, b_):
        return C.FusedHeadLoss.apply(h, w, b_, y, a, None, None, 1, False, 2)[0]

    assert torch.autograd.gradcheck(fused, tuple(leaves(x, weight, bias)))
    uniforms = torch.rand(y.numel(), dtype=torch.float64)
    _, (j, cr, sig) = C.head_pass(x, weight, bias, y, k=2, uniforms=uniforms)

    def sparse(h, w, b_):
        # Recompute cr and sig from the live inputs so gradcheck sees the function the backward claims.
        z = torch.nn.functional.linear(h, w, b_)
        margin = z.gather(-1, y[:, None]).squeeze(-1) - z.gather(-1, j[:, None]).squeeze(-1)
        value = C.SparseCringe.apply(
            h, w, b_, y, j, a, torch.nn.functional.softplus(margin).detach(), torch.sigmoid(margin).detach(), False
        )
        return value + 0 * margin.sum()

    assert torch.autograd.gradcheck(sparse, tuple(leaves(x, weight, bias)))


def test_bf16_hidden_states_match_fp32_closely():
    b = 2
    hidden, weight, bias, labels = setup(b=b, d=16, v=50)
    x, y, seq = flat(hidden, labels)
    u = torch.rand(int((seq >= b).sum()))
    full, _ = C.pairwise_cringe_loss(x, weight, bias, y, seq, b, k=1, uniforms=u)
    half, _ = C.pairwise_cringe_loss(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), y, seq, b, k=1, uniforms=u)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.02)


def test_sequence_sums_accumulate_in_float64():
    # 40,000 log-probs near -5 in one sequence: an fp32 running sum drifts; float64 then one rounding does not.
    values = -torch.rand(40_000, generator=torch.Generator().manual_seed(0)) * 10
    seq_index = torch.zeros(40_000, dtype=torch.long)
    exact = values.double().sum().float()
    assert torch.zeros(1).index_add_(0, seq_index, values)[0] != exact  # the naive sum this replaces
    assert C.sequence_sums(values, seq_index, 1)[0] == exact
