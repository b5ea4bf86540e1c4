"""Pure tensor losses: cross-entropy, the Cringe token loss, the pairwise gate, and the full objectives.

Every function here is a pure function of tensors (plus an optional `torch.Generator` for the Cringe
sampling): no model, no tokenizer, no config. Shapes use these letters:

    B  sequences (pairs for the pairwise objective)     T  token positions
    V  vocabulary                                       N  flattened token rows

Labels follow the Hugging Face convention: `labels[b, t]` is the token that `logits[b, t]` predicts (already
shifted), and `ignore_index` (-100) marks positions that do not count (prompt and padding).

Formulas: docs/design.md, section 1 ("What is computed").

Each objective's hyper-parameters and their defaults live in one settings dataclass (`PairwiseCringeSettings`,
`BinaryCringeSettings`, `DPOSettings`); the functions' keyword defaults are read from it, and `cringe train`,
`cringe iterate` and the trainer use the same dataclass (cringe.registry), so a Python caller of a loss gets the
objective the command line trains with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cringe.errors import UserError

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------------
# Settings: each objective's hyper-parameters, with the one default of each
# ---------------------------------------------------------------------------------------------------------------


def _setting(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class PairwiseCringeSettings:
    """Pairwise Cringe (docs/design.md 1.2). The defaults come from the sweep on the sentiment testbed's training
    prompts (docs/results/defaults.md, bench/research/sweep_pairwise_cringe.py): alpha 0.2 tied with a live gate for the
    best proxy win rate and had the lowest KL; margin 1, temperature 1, sum, k 1 and a detached gate stay (no
    variant of them did better beyond noise)."""

    alpha: float = _setting(0.2, "weight of the Cringe term")
    k: int = _setting(1, "Cringe: sample the positive from the model's top-k (ParlAI default 1)")
    margin: float = _setting(1.0, "gate margin b (nats)")
    temperature: float = _setting(1.0, "gate temperature tau")
    margin_on: str = _setting("sum", "Delta on sequence log-prob 'sum' or per-token 'mean'", choices=("sum", "mean"))
    detach_gate: bool = _setting(True, "gate is a weight only (no gradient through it)")
    detach_positive: bool = _setting(False, "no gradient into the sampled positive logit")

    def __post_init__(self):
        _check_cringe(self.alpha, self.k)
        if self.margin_on not in ("sum", "mean"):
            raise UserError(f"margin_on must be 'sum' or 'mean', got {self.margin_on!r}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class BinaryCringeSettings:
    """Binary Cringe (docs/design.md 1.1), with the defaults of the authors' ParlAI code."""

    alpha: float = _setting(1.0, "weight of the Cringe term")
    k: int = _setting(1, "Cringe: sample the positive from the model's top-k (ParlAI default 1)")
    detach_positive: bool = _setting(False, "no gradient into the sampled positive logit")

    def __post_init__(self):
        _check_cringe(self.alpha, self.k)


@dataclass(frozen=True)
class DPOSettings:
    """DPO, IPO and hinge (docs/design.md 1.3); beta 0.1 as in the DPO paper and TRL."""

    beta: float = _setting(0.1, "DPO/IPO/hinge beta")

    def __post_init__(self):
        if self.beta <= 0:
            raise UserError(f"beta must be > 0, got {self.beta}")


@dataclass(frozen=True)
class SFTSettings:
    """Cross-entropy has no setting."""


def _check_cringe(alpha: float, k: int) -> None:
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    if alpha < 0:
        raise UserError(f"alpha must be >= 0, got {alpha}")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are computed in float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---------------------------------------------------------------------------------------------------------------
# Token-level pieces
# ---------------------------------------------------------------------------------------------------------------


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """log softmax(logits)[label] for each position, 0 where the label is ignored.

    logits [..., V], labels [...] -> [...] (float32 for half inputs). Computed through `cross_entropy` so that no second
    [..., V] log-softmax tensor is materialised.
    """
    flat = F.cross_entropy(
        _upcast(logits.reshape(-1, logits.shape[-1])),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return -flat.view(labels.shape)


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of completion-token log-probs and the number of completion tokens per sequence.

    logits [B, T, V], labels [B, T] -> (logp_sum [B] float32, n_tokens [B] long).
    """
    per_token = token_logps(logits, labels, ignore_index)
    return per_token.sum(-1), (labels != ignore_index).sum(-1)


def draw_cringe_uniforms(n: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The uniform draws that pick each negative token's positive candidate: [n] float32 in [0, 1).

    Drawn in one call so that a chunked computation can slice the same draws and sample exactly what the
    plain computation samples.
    """
    return torch.rand(n, device=device, generator=generator, dtype=torch.float32)


def sample_cringe_positives(
    logits: torch.Tensor,
    negative_ids: torch.Tensor,
    k: int = 1,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one positive token per row from the model's own top-k alternatives (docs/design.md 1.1, steps 1-2).

    Take the top-(k+1) logits; drop the negative token if it is among them, else drop the (k+1)-th; sample one
    of the k that remain from softmax over their logits. The choice carries no gradient.

    logits [N, V], negative_ids [N] long, uniforms [N] optional (see `draw_cringe_uniforms`) -> positive_ids [N].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if logits.shape[-1] < k + 1:
        raise ValueError(f"k={k} needs a vocabulary of at least k+1={k + 1} tokens, got {logits.shape[-1]}")
    if uniforms is None:
        uniforms = draw_cringe_uniforms(logits.shape[0], logits.device, generator)
    with torch.no_grad():
        top_values, top_ids = logits.topk(k + 1, dim=-1)  # [N, k+1]
        is_negative = top_ids == negative_ids.unsqueeze(-1)
        keep = ~is_negative
        # When the negative token is not among the top k+1, the (k+1)-th is the one dropped.
        keep[:, -1] &= is_negative.any(-1)
        probs = torch.softmax(_upcast(top_values).masked_fill(~keep, float("-inf")), dim=-1)
        cdf = probs.cumsum(-1)
        # Inverse-CDF sampling. Scaling u by the total keeps it strictly below the last kept entry's cdf even
        # when rounding leaves the total a hair under 1, and `cdf <= u` can never stop on a zero-probability
        # (dropped) entry, so the pick is always one of the k candidates.
        threshold = (uniforms.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        index = (cdf <= threshold).sum(-1, keepdim=True).clamp_max(k)
        return top_ids.gather(-1, index).squeeze(-1)


def cringe_token_loss(
    logits: torch.Tensor,
    negative_ids: torch.Tensor,
    k: int = 1,
    generator: torch.Generator | None = None,
    detach_positive: bool = False,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Cringe contrastive loss of each negative token (Adolphs et al. 2022; ParlAI semantics).

    cr = softplus(z[y-] - z[j]) = -log(e^{s+} / (e^{s+} + e^{s-})), with j sampled by
    `sample_cringe_positives`. Gradient flows into z[y-] (pushed down) and z[j] (pushed up) unless
    `detach_positive`.

    logits [N, V], negative_ids [N] long -> losses [N] float32.
    """
    positive_ids = sample_cringe_positives(logits, negative_ids, k, generator, uniforms)
    s_negative = _upcast(logits.gather(-1, negative_ids.unsqueeze(-1)).squeeze(-1))
    s_positive = _upcast(logits.gather(-1, positive_ids.unsqueeze(-1)).squeeze(-1))
    if detach_positive:
        s_positive = s_positive.detach()
    return F.softplus(s_negative - s_positive)


def soft_margin_gate(delta: torch.Tensor, margin: float, temperature: float) -> torch.Tensor:
    """g = sigmoid((margin - delta) / temperature), with gradient. delta [B] -> g [B] float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.sigmoid((margin - _upcast(delta)) / temperature)


def pairwise_cringe_gate(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    margin: float,
    temperature: float,
) -> torch.Tensor:
    """Soft-margin gate g = sigmoid((margin - (chosen - rejected)) / temperature), one weight per pair.

    chosen_logps [B], rejected_logps [B] -> g [B] in (0, 1), without gradient: the gate decides how hard a
    pair pushes, it is not itself a path for gradient (the objective's `detach_gate=False` keeps one).
    """
    return soft_margin_gate(_upcast(chosen_logps) - _upcast(rejected_logps), margin, temperature).detach()


# ---------------------------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LossOutput:
    """A scalar loss plus per-sequence statistics for logging (all detached except `loss`)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor]


def _select(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the counted positions: logits [B, T, V], labels [B, T] -> ([N, V], [N])."""
    mask = labels != ignore_index
    return logits[mask], labels[mask]


def _normaliser(num_items: torch.Tensor | float | None, fallback: torch.Tensor) -> torch.Tensor:
    # Gradient accumulation and data parallelism pass the global count so that every micro-batch divides by
    # the same number: the update then equals one large batch's.
    if num_items is None:
        return fallback.clamp_min(1)
    return torch.as_tensor(num_items, device=fallback.device).clamp_min(1)


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items: torch.Tensor | float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LossOutput:
    """Token-level mean cross-entropy over completion tokens. logits [B, T, V], labels [B, T] -> scalar."""
    logps = token_logps(logits, labels, ignore_index)
    n_tokens = (labels != ignore_index).sum()
    loss = -logps.sum() / _normaliser(num_items, n_tokens)
    return LossOutput(loss, {"logps": logps.sum(-1).detach(), "n_tokens": (labels != ignore_index).sum(-1)})


def binary_cringe_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    is_positive: torch.Tensor,
    *,
    alpha: float = BinaryCringeSettings.alpha,
    k: int = BinaryCringeSettings.k,
    detach_positive: bool = BinaryCringeSettings.detach_positive,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    num_items: torch.Tensor | float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LossOutput:
    """Binary Cringe objective (docs/design.md 1.1): CE on positive sequences, alpha * Cringe on negative ones.

    L = (sum_{positive tokens} ce + alpha * sum_{negative tokens} cr) / (#positive tokens + #negative tokens)

    logits [B, T, V], labels [B, T], is_positive [B] bool -> scalar. `uniforms` [#negative tokens] fixes
    the sampling (row-major order over the negative sequences' counted tokens).
    """
    positive = is_positive.bool()
    pos_logits, pos_labels = _select(logits[positive], labels[positive], ignore_index)
    neg_logits, neg_labels = _select(logits[~positive], labels[~positive], ignore_index)
    ce = F.cross_entropy(_upcast(pos_logits), pos_labels, reduction="sum")
    cr = cringe_token_loss(neg_logits, neg_labels, k, generator, detach_positive, uniforms).sum()
    n_tokens = (labels != ignore_index).sum()
    loss = (ce + alpha * cr) / _normaliser(num_items, n_tokens)
    logp_sum, n_per_seq = sequence_logps(logits.detach(), labels, ignore_index)
    return LossOutput(loss, {"logps": logp_sum, "n_tokens": n_per_seq, "ce_sum": ce.detach(), "cr_sum": cr.detach()})


def pairwise_delta(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    margin_on: str = "sum",
) -> torch.Tensor:
    """Delta = log pi(y_w|x) - log pi(y_l|x), on sums or per-token means. All inputs [B] -> [B]."""
    if margin_on == "sum":
        return chosen_logps - rejected_logps
    if margin_on == "mean":
        return chosen_logps / chosen_tokens.clamp_min(1) - rejected_logps / rejected_tokens.clamp_min(1)
    raise ValueError(f"margin_on must be 'sum' or 'mean', got {margin_on!r}")


def pairwise_cringe_loss(
    chosen_logits: torch.Tensor,
    chosen_labels: torch.Tensor,
    rejected_logits: torch.Tensor,
    rejected_labels: torch.Tensor,
    *,
    alpha: float = PairwiseCringeSettings.alpha,
    k: int = PairwiseCringeSettings.k,
    margin: float = PairwiseCringeSettings.margin,
    temperature: float = PairwiseCringeSettings.temperature,
    margin_on: str = PairwiseCringeSettings.margin_on,
    detach_gate: bool = PairwiseCringeSettings.detach_gate,
    detach_positive: bool = PairwiseCringeSettings.detach_positive,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    num_items: torch.Tensor | float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LossOutput:
    """Pairwise Cringe objective (Xu et al. 2023; docs/design.md 1.2).

    L = (sum_{t in y_w} ce_t + alpha * sum_pairs g * sum_{t in y_l} cr_t) / (#y_w tokens + #y_l tokens)
    with g = sigmoid((margin - Delta) / temperature) and Delta from `pairwise_delta`.

    chosen_logits [B, Tw, V], chosen_labels [B, Tw], rejected_logits [B, Tl, V], rejected_labels [B, Tl]
    -> scalar. `uniforms` [#rejected tokens] fixes the sampling (row-major over counted rejected tokens).
    """
    chosen_tok = token_logps(chosen_logits, chosen_labels, ignore_index)  # [B, Tw]
    chosen_lp, chosen_n = chosen_tok.sum(-1), (chosen_labels != ignore_index).sum(-1)
    # With a detached gate the rejected log-probs are only a weight: build no graph (it would keep a
    # [tokens, V] softmax alive for a backward that contributes nothing).
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_gate):
        rejected_lp, rejected_n = sequence_logps(rejected_logits, rejected_labels, ignore_index)
    delta = pairwise_delta(chosen_lp, rejected_lp, chosen_n, rejected_n, margin_on)
    gate = soft_margin_gate(delta, margin, temperature)
    if detach_gate:
        gate = gate.detach()

    neg_logits, neg_labels = _select(rejected_logits, rejected_labels, ignore_index)
    cr = cringe_token_loss(neg_logits, neg_labels, k, generator, detach_positive, uniforms)  # [N_l]
    pair_of_token = torch.arange(rejected_labels.shape[0], device=rejected_labels.device)
    pair_of_token = pair_of_token.unsqueeze(-1).expand_as(rejected_labels)[rejected_labels != ignore_index]
    cr_weighted = (gate[pair_of_token] * cr).sum()

    n_tokens = chosen_n.sum() + rejected_n.sum()
    ce = -chosen_lp.sum()
    loss = (ce + alpha * cr_weighted) / _normaliser(num_items, n_tokens)
    stats = {
        "chosen_logps": chosen_lp.detach(),
        "rejected_logps": rejected_lp.detach(),
        "chosen_tokens": chosen_n,
        "rejected_tokens": rejected_n,
        "delta": delta.detach(),
        "gate": gate.detach(),
        "ce_sum": ce.detach(),
        "cr_sum": cr.sum().detach(),
    }
    return LossOutput(loss, stats)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = DPOSettings.beta,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family per-pair losses (docs/design.md 1.3). All inputs [B] -> (losses [B], chosen_rewards [B], rejected_rewards [B]).

    h = beta * ((pi_w - ref_w) - (pi_l - ref_l))
      sigmoid: -log sigmoid(h)      hinge: max(0, 1 - h)      ipo: (h / beta - 1 / (2 beta))^2
    For IPO pass length-averaged log-probs (Azar et al.); the others take sums. Rewards are
    beta * (log pi - log ref), detached, for logging.
    """
    chosen_ratio = _upcast(policy_chosen_logps) - _upcast(ref_chosen_logps)
    rejected_ratio = _upcast(policy_rejected_logps) - _upcast(ref_rejected_logps)
    logits = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid', 'ipo' or 'hinge', got {loss_type!r}")
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
