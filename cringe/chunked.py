"""The objectives of `cringe.losses`, fused with the LM head and computed in chunks of tokens.

The plain path materialises logits [tokens, V] (and their softmax for backward): with a 262k vocabulary and a
few thousand completion tokens that is gigabytes. Here the LM head is applied to `chunk_size` tokens at a time
and each chunk's gradient with respect to its hidden states and to the head weight is formed right there, in
the forward pass (the fused-linear-cross-entropy idea of Liger-Kernel, chunked over tokens rather than pairs).
Extra peak memory is O(chunk_size x V) instead of O(tokens x V); backward only scales the stored gradients.

Every objective is written as per-token weights on two gradient shapes, so one chunk loop serves all:

    d loss / d z_t = a_t (softmax(z_t) - e_{y_t}) + c_t sigma(z_t[y_t] - z_t[j_t]) (e_{y_t} - e_{j_t})

the gradient of a_t * cross-entropy (= -a_t log pi(y_t)) plus that of c_t * Cringe with sampled positive j_t
(without e_{j_t} when the positive is detached). The sampled positives come from the same uniforms as the
plain path, so both sample the same tokens.

The Cringe term's gradient is sparse in the vocabulary: two entries per token. So a Cringe token (rejected or
bad) needs only one no-graph head forward (for its top-k, its log-prob and its sampled positive) and a
backward that touches two rows of the head weight, instead of forward + two dense backward matmuls. The
costs, in LM-head matmuls over the completion tokens (the transformer body is never rerun):
  * SFT: 3 per token (forward, grad-hidden, grad-weight), like any fused cross-entropy.
  * binary Cringe: 3 per good token, 1 per bad token.
  * Pairwise Cringe, detached gate (default): 3 per chosen token, 1 per rejected token; the gate's Delta comes
    free from those passes. Less head work than SFT over the same tokens.
  * Pairwise Cringe, live gate: the chosen tokens' weights depend on the rejected Cringe sums, so the chosen
    tokens need one extra no-graph pass, and the rejected tokens a dense pass (4 and 4).
  * DPO family: the per-pair derivative needs every sequence's log-prob first: 4 per token.

Inputs are the counted positions only: hidden [N, D] (final hidden states at the positions that predict a
completion token), targets [N] and, where sequences matter, seq_index [N]; prompt and padding positions never
reach the LM head.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from cringe import losses as L

DEFAULT_CHUNK = 1024


def causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the LM


def chunked_unsupported_reason(model) -> str | None:
    """Why this module cannot score `model` (None when it can): it needs a plain linear LM head, a decoder to
    hook, and a forward that accepts `logits_to_keep`."""

    lm = causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or hasattr(head, "lora_A"):
        return "the model has no plain linear LM head (LoRA on lm_head is not supported)"
    # what some architectures do between the decoder and the head (Gemma 2, Cohere, Granite, MiniCPM)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "scale_width"):
        if getattr(lm.config, name, None) not in (None, 1.0):
            return f"the model applies {name} to its logits (the head is not linear)"
    if "logits_to_keep" not in inspect.signature(lm.forward).parameters:
        return "the model's forward does not accept logits_to_keep"
    try:
        lm.get_decoder()
    except (AttributeError, NotImplementedError):
        return "the model has no get_decoder()"
    return None


def completion_hidden(model, decoder, input_ids: torch.Tensor, labels: torch.Tensor, **inputs):
    """Final hidden states at the positions that predict a completion token, with no logits computed.

    `model` is called as given (a DDP wrapper's hooks stay intact) with `logits_to_keep` empty; a forward hook on
    `decoder` (the unwrapped LM's) captures its output. input_ids, labels [B, T] -> (hidden [N, D], targets [N],
    mask [B, T-1]: which next-token positions are counted, row-major as hidden's rows).
    """
    captured = {}

    def hook(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    try:
        model(
            input_ids=input_ids,
            use_cache=False,
            **inputs,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        )
    finally:
        handle.remove()
    targets = labels[:, 1:]
    mask = targets != L.IGNORE_INDEX
    return captured["hidden"][:, :-1][mask], targets[mask], mask


def row_of_position(mask: torch.Tensor) -> torch.Tensor:
    """mask [B, T] -> the row index of each True entry, row-major [N]."""
    return torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand_as(mask)[mask]


def _logits(hidden, weight, bias) -> torch.Tensor:
    return L._upcast(F.linear(hidden, weight, bias))


def _gather(z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return z.gather(-1, ids[:, None]).squeeze(-1)


@torch.no_grad()
def head_pass(hidden, weight, bias, targets, *, k=1, uniforms=None, chunk_size=DEFAULT_CHUNK):
    """No-graph pass of the head. Returns per-token log pi(y_t) [N] and, with `uniforms` [N], the Cringe
    quantities (positives j_t [N], cr_t [N], sigma(z_t[y_t] - z_t[j_t]) [N]); else None."""
    logps, pos, crs, sigs = [], [], [], []
    for s in range(0, hidden.shape[0], chunk_size):
        z = _logits(hidden[s : s + chunk_size], weight, bias)
        y = targets[s : s + chunk_size]
        z_y = _gather(z, y)
        logps.append(z_y - z.logsumexp(-1))
        if uniforms is not None:
            j = L.sample_cringe_positives(z, y, k, uniforms=uniforms[s : s + chunk_size])
            margin = z_y - _gather(z, j)
            pos.append(j)
            crs.append(F.softplus(margin))
            sigs.append(torch.sigmoid(margin))
        del z
    empty = hidden.new_zeros(0, dtype=torch.float32)
    logps = torch.cat(logps) if logps else empty
    if uniforms is None:
        return logps, None
    if not pos:
        return logps, (targets.new_zeros(0), empty, empty)
    return logps, (torch.cat(pos), torch.cat(crs), torch.cat(sigs))


class SparseCringe(torch.autograd.Function):
    """sum_t c_t cr_t for Cringe tokens whose logits were already seen by `head_pass`.

    d/dz_t has two non-zeros (+sigma at y_t, -sigma at j_t), so backward is a gather of two head rows per token
    for the hidden states and an index_add into two rows for the weight: no vocabulary-sized work at all.
    forward(hidden [N, D], weight [V, D], bias [V] | None, targets [N], positives [N], c [N], cr [N], sig [N],
            detach_positive) -> [] float32
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, positives, c, cr, sig, detach_positive):
        ctx.save_for_backward(hidden, weight, targets, positives, (c * sig).float())
        ctx.has_bias, ctx.detach_positive = bias is not None, detach_positive
        return (c * cr).sum().float()

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, targets, positives, coef = ctx.saved_tensors
        coef = coef * grad_total.float()
        w_y = weight[targets].float()
        direction = w_y if ctx.detach_positive else w_y - weight[positives].float()
        grad_hidden = (coef[:, None] * direction).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            weighted = coef[:, None] * hidden.float()
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_weight.index_add_(0, targets, weighted)
            if not ctx.detach_positive:
                grad_weight.index_add_(0, positives, -weighted)
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            grad_bias.index_add_(0, targets, coef)
            if not ctx.detach_positive:
                grad_bias.index_add_(0, positives, -coef)
            grad_bias = grad_bias.to(weight.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


class FusedHeadLoss(torch.autograd.Function):
    """sum_t a_t ce_t + c_t cr_t over tokens, with the LM head fused in and gradients formed chunk by chunk.

    forward(hidden [N, D], weight [V, D], bias [V] | None, targets [N], a [N], c [N] | None,
            uniforms [N] | None, k, detach_positive, chunk_size) -> (total [] float32, logps [N], no gradient)
    Tokens with c_t != 0 get a positive sampled from their own logits with uniforms[t].
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, a, c, uniforms, k, detach_positive, chunk_size):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        )
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            h, y, a_ = hidden[s:e], targets[s:e], a[s:e]
            z = _logits(h, weight, bias)  # [C, V], the only vocabulary-sized tensors live in this loop
            lse = z.logsumexp(-1)
            z_y = _gather(z, y)
            logps[s:e] = z_y - lse
            chunk_total = (a_ * (lse - z_y)).sum()
            grad_z = torch.softmax(z, dim=-1).mul_(a_[:, None].to(z.dtype))
            grad_z.scatter_add_(-1, y[:, None], -a_[:, None].to(z.dtype))
            if c is not None:
                rows = (c[s:e] != 0).nonzero().squeeze(-1)
                if rows.numel():
                    c_ = c[s:e][rows]
                    j = L.sample_cringe_positives(z[rows], y[rows], k, uniforms=uniforms[s:e][rows])
                    margin = z_y[rows] - z[rows].gather(-1, j[:, None]).squeeze(-1)
                    chunk_total = chunk_total + (c_ * F.softplus(margin)).sum()
                    sig = (torch.sigmoid(margin) * c_).to(z.dtype)
                    grad_z.index_put_((rows, y[rows]), sig, accumulate=True)
                    if not detach_positive:
                        grad_z.index_put_((rows, j), -sig, accumulate=True)
            total += chunk_total.double()
            grad_z = grad_z.to(h.dtype)
            grad_hidden[s:e] = grad_z @ weight.to(h.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_z.T.float(), h.float())
            if grad_bias is not None:
                grad_bias += grad_z.float().sum(0)
            del z, grad_z
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.param_dtype = weight.dtype
        ctx.mark_non_differentiable(logps)
        return total.to(torch.float32), logps

    @staticmethod
    def backward(ctx, grad_total, _grad_logps):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        gh = grad_hidden * grad_total.to(grad_hidden.dtype)
        gw = (grad_weight * grad_total).to(ctx.param_dtype) if grad_weight is not None else None
        gb = (grad_bias * grad_total).to(ctx.param_dtype) if grad_bias is not None else None
        return gh, gw, gb, None, None, None, None, None, None, None


def _fused(
    hidden, weight, bias, targets, a, c=None, uniforms=None, k=1, detach_positive=False, chunk_size=DEFAULT_CHUNK
):
    total, logps = FusedHeadLoss.apply(hidden, weight, bias, targets, a, c, uniforms, k, detach_positive, chunk_size)
    return total, logps


def sequence_logps(hidden, weight, bias, targets, seq_index, num_sequences: int, *, chunk_size=DEFAULT_CHUNK):
    """No-graph sequence log-probs: hidden [N, D], targets [N], seq_index [N] -> (sum of log pi(y_t) per sequence
    [num_sequences] float32, counted tokens per sequence [num_sequences])."""
    tok, _ = head_pass(hidden, weight, bias, targets, chunk_size=chunk_size)
    return sequence_sums(tok, seq_index, num_sequences), torch.bincount(seq_index, minlength=num_sequences)


def sequence_sums(values: torch.Tensor, seq_index: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Per-sequence sums of per-token values: values [N], seq_index [N] -> [num_sequences] float32.

    Accumulated in float64: on a GPU index_add_ adds with atomics in no fixed order, and sequence log-probs of
    hundreds of tokens (~ -12 each) summed so in fp32 put DPO's gradients an order of magnitude further from
    float64 than the plain path's tree reduction (bench/gpu/cuda_parity.py; the numbers are in
    docs/performance.md, "One GPU")."""
    total = torch.zeros(num_sequences, device=values.device, dtype=torch.float64)
    return total.index_add_(0, seq_index, values.double()).float()


def _norm(num_items, fallback: int, device) -> torch.Tensor:
    return L._normaliser(num_items, torch.tensor(float(fallback), device=device))


def sft_loss(hidden, weight, bias, targets, *, num_items=None, chunk_size=DEFAULT_CHUNK) -> torch.Tensor:
    """Equals `losses.sft_loss(...).loss`. hidden [N, D], targets [N] -> scalar."""
    n = _norm(num_items, targets.numel(), hidden.device)
    a = torch.ones(targets.numel(), device=hidden.device) / n
    return _fused(hidden, weight, bias, targets, a, chunk_size=chunk_size)[0]


def binary_cringe_loss(
    hidden,
    weight,
    bias,
    targets,
    token_is_positive,
    *,
    alpha=L.BinaryCringeSettings.alpha,
    k=L.BinaryCringeSettings.k,
    detach_positive=L.BinaryCringeSettings.detach_positive,
    generator=None,
    uniforms=None,
    num_items=None,
    chunk_size=DEFAULT_CHUNK,
) -> torch.Tensor:
    """Equals `losses.binary_cringe_loss(...).loss`. token_is_positive [N] bool; `uniforms` [#negative tokens]."""
    device = hidden.device
    n = _norm(num_items, targets.numel(), device)
    negative = ~token_is_positive
    if uniforms is None:
        uniforms = L.draw_cringe_uniforms(int(negative.sum()), device, generator)
    pos_idx, neg_idx = token_is_positive.nonzero().squeeze(-1), negative.nonzero().squeeze(-1)
    h_p, y_p, h_n, y_n = hidden[pos_idx], targets[pos_idx], hidden[neg_idx], targets[neg_idx]
    ce, _ = _fused(h_p, weight, bias, y_p, torch.ones_like(y_p, dtype=torch.float32) / n, chunk_size=chunk_size)
    _, (j, cr, sig) = head_pass(h_n, weight, bias, y_n, k=k, uniforms=uniforms.float(), chunk_size=chunk_size)
    c = torch.full_like(cr, alpha) / n
    return ce + SparseCringe.apply(h_n, weight, bias, y_n, j, c, cr, sig, detach_positive)


def pairwise_cringe_loss(
    hidden,
    weight,
    bias,
    targets,
    seq_index,
    num_pairs,
    *,
    alpha=L.PairwiseCringeSettings.alpha,
    k=L.PairwiseCringeSettings.k,
    margin=L.PairwiseCringeSettings.margin,
    temperature=L.PairwiseCringeSettings.temperature,
    margin_on=L.PairwiseCringeSettings.margin_on,
    detach_gate=L.PairwiseCringeSettings.detach_gate,
    detach_positive=L.PairwiseCringeSettings.detach_positive,
    generator=None,
    uniforms=None,
    num_items=None,
    chunk_size=DEFAULT_CHUNK,
):
    """Equals `losses.pairwise_cringe_loss`. Returns (loss, stats).

    seq_index [N]: sequences 0..B-1 are the chosen completions of pairs 0..B-1 and B..2B-1 the rejected ones
    (the collator's order); `uniforms` [#rejected tokens] in token order.
    """
    device = hidden.device
    B = num_pairs
    rejected = seq_index >= B
    pair = seq_index % B
    n = _norm(num_items, targets.numel(), device)
    counts = torch.bincount(seq_index, minlength=2 * B)
    chosen_n, rejected_n = counts[:B], counts[B:]
    if uniforms is None:
        uniforms = L.draw_cringe_uniforms(int(rejected.sum()), device, generator)
    rej_idx, cho_idx = rejected.nonzero().squeeze(-1), (~rejected).nonzero().squeeze(-1)
    h_c, y_c, h_r, y_r = hidden[cho_idx], targets[cho_idx], hidden[rej_idx], targets[rej_idx]
    u_r = uniforms.to(torch.float32)

    # One no-graph pass over the rejected tokens gives everything the gate and the sparse Cringe gradient need.
    rejected_tok_lp, (j_r, cr, sig) = head_pass(h_r, weight, bias, y_r, k=k, uniforms=u_r, chunk_size=chunk_size)
    cr_sums = sequence_sums(cr, pair[rej_idx], B)
    if detach_gate:
        # Chosen tokens: cross-entropy with fixed weights; their log-probs come out of the same fused pass.
        ce_total, chosen_tok_lp = _fused(
            h_c, weight, bias, y_c, torch.ones_like(y_c, dtype=torch.float32) / n, chunk_size=chunk_size
        )
    else:
        chosen_tok_lp, _ = head_pass(h_c, weight, bias, y_c, chunk_size=chunk_size)
    chosen_lp = sequence_sums(chosen_tok_lp, pair[cho_idx], B)
    rejected_lp = sequence_sums(rejected_tok_lp, pair[rej_idx], B)
    delta = L.pairwise_delta(chosen_lp, rejected_lp, chosen_n, rejected_n, margin_on)
    gate = L.soft_margin_gate(delta, margin, temperature)

    c_r = alpha * gate[pair[rej_idx]] / n
    if detach_gate:
        loss = ce_total + SparseCringe.apply(h_r, weight, bias, y_r, j_r, c_r.float(), cr, sig, detach_positive)
    else:
        # d loss/d Delta_b = alpha/n CR_b dg/dDelta_b with dg/dDelta = -g(1-g)/tau; Delta rises with the chosen
        # log-prob and falls with the rejected one (each scaled by 1/length for margin_on='mean'), and
        # grad_z log pi(y) = -(softmax - e_y): so chosen tokens get -dL/dDelta and rejected +dL/dDelta on the
        # cross-entropy shape.
        d_delta = alpha / n * cr_sums * (-gate * (1 - gate) / temperature)
        kw = 1.0 / chosen_n.clamp_min(1) if margin_on == "mean" else torch.ones_like(d_delta)
        kl = 1.0 / rejected_n.clamp_min(1) if margin_on == "mean" else torch.ones_like(d_delta)
        a_c = 1.0 / n - (d_delta * kw)[pair[cho_idx]]
        a_r = (d_delta * kl)[pair[rej_idx]]
        t_c, _ = _fused(h_c, weight, bias, y_c, a_c.float(), chunk_size=chunk_size)
        t_r, _ = _fused(h_r, weight, bias, y_r, a_r.float(), c_r.float(), u_r, k, detach_positive, chunk_size)
        # The gradient is right; the value carries helper terms (a * ce for the gate path): report the objective.
        value = (-chosen_lp.sum() + alpha * (gate * cr_sums).sum()) / n
        loss = (t_c + t_r) - (t_c + t_r).detach() + value.detach()
    stats = {
        "chosen_logps": chosen_lp,
        "rejected_logps": rejected_lp,
        "chosen_tokens": chosen_n,
        "rejected_tokens": rejected_n,
        "delta": delta,
        "gate": gate,
        "cr_sum": cr_sums.sum(),
    }
    return loss, stats


def dpo_family_loss(
    hidden,
    weight,
    bias,
    targets,
    seq_index,
    num_pairs,
    ref_logps,
    *,
    beta=L.DPOSettings.beta,
    loss_type="sigmoid",
    length_average=False,
    num_items=None,
    chunk_size=DEFAULT_CHUNK,
):
    """Equals `losses.dpo_loss(...)[0].sum() / num_items`. ref_logps [2B] (chosen then rejected, sums, or means
    with `length_average` as for IPO). Returns (loss, (losses, chosen_rewards, rejected_rewards, policy_logps))."""
    device = hidden.device
    B = num_pairs
    n = _norm(num_items, B, device)
    tok_lp, _ = head_pass(hidden, weight, bias, targets, chunk_size=chunk_size)
    counts = torch.bincount(seq_index, minlength=2 * B).clamp_min(1)
    scale = 1.0 / counts if length_average else torch.ones(2 * B, device=device)
    policy = (sequence_sums(tok_lp, seq_index, 2 * B) * scale).requires_grad_()
    with torch.enable_grad():
        losses, chosen_r, rejected_r = L.dpo_loss(policy[:B], policy[B:], ref_logps[:B], ref_logps[B:], beta, loss_type)
        (d_policy,) = torch.autograd.grad(losses.sum() / n, policy)
    # d loss/d log pi(y_t) = d_policy[seq] * scale[seq], and grad_z log pi(y) = -(softmax - e_y).
    a = -(d_policy * scale)[seq_index].float()
    fused, _ = _fused(hidden, weight, bias, targets, a, chunk_size=chunk_size)
    loss = fused - fused.detach() + (losses.sum() / n).detach()
    return loss, (losses.detach(), chosen_r, rejected_r, policy.detach())
