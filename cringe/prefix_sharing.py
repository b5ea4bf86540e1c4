"""Prefix-shared rows for the pairwise losses: one forward over [prompt | chosen | rejected] per pair.

The plain batch runs the prompt twice (rows `prompt + chosen` and `prompt + rejected`). A shared row runs it once:
the rejected answer's position ids restart at len(prompt), and a 4D additive float mask keeps the rejected tokens
from seeing the chosen ones, so each answer token sees exactly what it sees in its own plain row. Several pairs may
share a row (packing): the mask is then block-diagonal across pairs.

What the row layout changes, and how this module keeps the results equal to the plain path's:

* **Label shift.** An answer token is predicted by the hidden state one position before it in its own plain row.
  For the rejected answer's first token that is the prompt's last position, not the row position before it (the
  chosen answer's last token). `answer_index` records, per answer token, the row and column whose hidden state
  predicts it.
* **Order.** Answer tokens come out as the plain batch lays them out: the B chosen sequences, then the B rejected
  ones, each token in order (`seq_index` 0..B-1 chosen, B..2B-1 rejected). Consumers that split on
  `shape[0] // 2` (cringe.registry) or read `.view(2, -1).T` (the reference pass) work unchanged, and the Cringe
  uniforms, drawn row-major over the rejected tokens, pick the same candidate for the same token.
* **The mask is always passed.** Given position ids and no mask, transformers infers packed sequences from jumps in
  the position ids (`masking_utils.find_packed_sequence_indices`): a shared row's jump back would silently cut the
  prompt off from the rejected answer. The mask is a float additive one (0 allowed, finfo(dtype).min not): eager
  attention reads a boolean 4D mask differently.
* **Sliding windows.** A model with both full and sliding-window layers takes a dict of masks keyed by layer type
  (Gemma-2/3, Qwen2/3, ...): the sliding mask here limits the distance in position ids (q_pos - k_pos < window),
  which is what the plain row's window limits. A model with one window for every layer (Mistral) gets it built into
  its single mask. Only eager, sdpa and flex attention read such masks; see `can_share_prefix` for the rest.
* **FlexAttention.** A model loaded with `attn_implementation="flex_attention"` gets a `BlockMask` instead (one per
  layer type, likewise), built from a `mask_mod` over per-token tensors (pair, part, position id): the same allowed
  attention as `allowed_attention`, without an [R, T, T] tensor, and with the blocks nothing may attend to skipped.
  transformers passes a 4D `BlockMask` given as `attention_mask` through untouched
  (`masking_utils._preprocess_mask_arguments`). PyTorch runs FlexAttention's backward on CUDA (and XPU/HPU) only,
  so on a CPU it is forward-only: its parity is tested there without gradients (tests/test_prefix_sharing_flex.py);
  training with it has not run on a GPU yet (bench/gpu/prefix_sharing_flex.py is prepared for that).
"""

from __future__ import annotations

import inspect

import torch

from cringe import chunked as C
from cringe.errors import UserError

PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1

# Layer types whose attention a 4D mask fully describes. Anything else (linear attention, Mamba, chunked attention)
# carries state or structure a mask cannot restart for the rejected answer.
MASKED_LAYER_TYPES = ("full_attention", "sliding_attention")
# Model types whose layers are recurrent or whose attention is not positional-id based (ALiBi): no shared rows.
RECURRENT_MODEL_TYPES = (
    "mamba",
    "mamba2",
    "falcon_mamba",
    "rwkv",
    "recurrent_gemma",
    "xlstm",
    "jamba",
    "zamba",
    "zamba2",
    "bamba",
    "falcon_h1",
    "nemotron_h",
    "granitemoehybrid",
    "lfm2",
    "qwen3_next",
)
FLEX_ATTENTION = "flex_attention"
MASK_ATTENTION = ("eager", "sdpa", FLEX_ATTENTION)


# ----- rows --------------------------------------------------------------------------------------------------------


def build_shared_rows(
    rows: list[dict], pad_token_id: int, *, pack: bool = False, max_row_tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """Shared rows for a batch of tokenised pairs (each row: prompt_ids, completion_ids = [chosen, rejected]).

    One segment [prompt | chosen | rejected] per pair; without `pack` one row per pair, right-padded. With `pack`,
    segments fill rows in order up to `max_row_tokens` (None: all in one row; a longer segment gets a row of its own).

    Returns tensors (all long), R rows of T tokens, N answer tokens:
      input_ids, position_ids [R, T]; pair_id [R, T] (the pair of each token, -1 on padding); part [R, T]
      (PROMPT, CHOSEN, REJECTED, PADDING); answer_index [N, 2] (row, column of the hidden state predicting each
      answer token); answer_targets [N]; seq_index [N] (chosen sequences 0..B-1, then rejected B..2B-1, in the
      plain batch's token order); num_sequences [] (2B).
    """
    if not rows:
        raise UserError("prefix sharing: the batch has no pairs")
    segments = []
    for i, row in enumerate(rows):
        completions = row.get("completion_ids")
        if completions is None or len(completions) != 2:
            raise UserError(f"prefix sharing: row {i}: completion_ids must hold [chosen, rejected]")
        if not row.get("prompt_ids"):
            raise UserError(f"prefix sharing: row {i}: prompt_ids is empty (the first answer token needs a prompt)")
        segments.append((list(row["prompt_ids"]), list(completions[0]), list(completions[1])))

    lengths = [len(p) + len(c) + len(r) for p, c, r in segments]
    layout: list[list[int]] = []  # segments of each row
    if not pack:
        layout = [[i] for i in range(len(segments))]
    else:
        limit = max_row_tokens if max_row_tokens is not None else sum(lengths)
        used = None
        for i, n in enumerate(lengths):
            if layout and used + n <= limit:
                layout[-1].append(i)
                used += n
            else:
                layout.append([i])
                used = n
    width = max(sum(lengths[i] for i in row) for row in layout)
    shape = (len(layout), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    pair_id = torch.full(shape, -1, dtype=torch.long)
    part = torch.full(shape, PADDING, dtype=torch.long)
    chosen_index: list[list[tuple[int, int]]] = [[] for _ in segments]
    rejected_index: list[list[tuple[int, int]]] = [[] for _ in segments]
    for r, members in enumerate(layout):
        start = 0
        for i in members:
            prompt, chosen, rejected = segments[i]
            lp, lc, lr = len(prompt), len(chosen), len(rejected)
            end = start + lp + lc + lr
            input_ids[r, start:end] = torch.tensor(prompt + chosen + rejected, dtype=torch.long)
            position_ids[r, start:end] = torch.cat([torch.arange(lp + lc), torch.arange(lp, lp + lr)])
            pair_id[r, start:end] = i
            part[r, start : start + lp] = PROMPT
            part[r, start + lp : start + lp + lc] = CHOSEN
            part[r, start + lp + lc : end] = REJECTED
            last_prompt = start + lp - 1
            # The label shift: answer token t is predicted at the position before it in its own plain row; for
            # either answer's first token that is the prompt's last position.
            chosen_index[i] = [(r, last_prompt if t == 0 else start + lp + t - 1) for t in range(lc)]
            rejected_index[i] = [(r, last_prompt if t == 0 else start + lp + lc + t - 1) for t in range(lr)]
            start = end
        # Padding sits at real positions after the row's end; it only ever sees itself (see attention_mask).
        position_ids[r, start:] = torch.arange(width - start)

    b = len(segments)
    index, targets, seq_index = [], [], []
    for side, per_pair, answer in ((0, chosen_index, 1), (1, rejected_index, 2)):
        for i in range(b):
            index += per_pair[i]
            targets += segments[i][answer]
            seq_index += [side * b + i] * len(per_pair[i])
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "pair_id": pair_id,
        "part": part,
        "answer_index": torch.tensor(index, dtype=torch.long).view(-1, 2),
        "answer_targets": torch.tensor(targets, dtype=torch.long),
        "seq_index": torch.tensor(seq_index, dtype=torch.long),
        "num_sequences": torch.tensor(2 * b),
    }


def is_shared_batch(batch: dict) -> bool:
    return "answer_index" in batch and "part" in batch


def allowed_attention(batch: dict, sliding_window: int | None = None) -> torch.Tensor:
    """Which key each query may attend to: [R, T, T] bool.

    Causal within a pair, never across pairs, never from a rejected token to a chosen one; a padding token sees
    itself only (a query row with nothing allowed would give a softmax over nothing). With `sliding_window`, only
    keys whose position id is less than `sliding_window` behind the query's.
    """
    pair, part, pos = batch["pair_id"], batch["part"], batch["position_ids"]
    t = pair.shape[1]
    index = torch.arange(t, device=pair.device)
    causal = index[None, :, None] >= index[None, None, :]
    same_pair = (pair[:, :, None] == pair[:, None, :]) & (pair[:, :, None] >= 0)
    rejected_sees_chosen = (part[:, :, None] == REJECTED) & (part[:, None, :] == CHOSEN)
    allowed = causal & same_pair & ~rejected_sees_chosen
    if sliding_window is not None:
        allowed &= (pos[:, :, None] - pos[:, None, :]) < sliding_window
    return allowed | torch.eye(t, dtype=torch.bool, device=pair.device)[None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, T, T] bool -> [R, 1, T, T] float: 0 where allowed, finfo(dtype).min where not."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def shared_mask_mod(batch: dict, sliding_window: int | None = None):
    """FlexAttention's `mask_mod(b, h, q_idx, kv_idx) -> bool` for shared rows: exactly `allowed_attention`, read
    from the per-token tensors (pair_id, part, position_ids), so nothing of size T x T is held.

    The tensors are padded (as padding tokens) to a multiple of FlexAttention's block size, so that the indices of
    a partial last block past T, should a kernel evaluate them, read inside the tensors (transformers' own mask
    functions index unpadded tensors; this costs O(T) and removes the question).
    """
    from torch.nn.attention.flex_attention import _DEFAULT_SPARSE_BLOCK_SIZE as BLOCK

    t = batch["pair_id"].shape[1]
    extra = -t % BLOCK

    def padded(x: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, extra), value=fill)

    pair, part, pos = padded(batch["pair_id"], -1), padded(batch["part"], PADDING), padded(batch["position_ids"], 0)

    def mask_mod(b, h, q_idx, kv_idx):
        same_pair = (pair[b, q_idx] == pair[b, kv_idx]) & (pair[b, q_idx] >= 0)
        rejected_sees_chosen = (part[b, q_idx] == REJECTED) & (part[b, kv_idx] == CHOSEN)
        allowed = (q_idx >= kv_idx) & same_pair & ~rejected_sees_chosen
        if sliding_window is not None:
            allowed = allowed & (pos[b, q_idx] - pos[b, kv_idx] < sliding_window)
        return allowed | (q_idx == kv_idx)

    return mask_mod


def block_mask(batch: dict, sliding_window: int | None = None):
    """A FlexAttention `BlockMask` [R, 1, T, T] of `shared_mask_mod`, on the device of the batch's input_ids.

    The device is passed explicitly: `create_block_mask` has defaulted to CUDA. On an accelerator the mask's
    creation is compiled (as transformers does), which builds it block by block instead of evaluating a dense
    [R, 1, T, T] mask first; a CPU runs it eagerly (FlexAttention is forward-only there, and this keeps its tests
    free of a C++ compile).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    rows, t = batch["input_ids"].shape
    device = batch["input_ids"].device
    return create_block_mask(
        shared_mask_mod(batch, sliding_window), rows, None, t, t, device=device, _compile=device.type != "cpu"
    )


# ----- the model side ----------------------------------------------------------------------------------------------


def _text_config(lm):
    config = lm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _layer_types(config) -> list[str] | None:
    types = getattr(config, "layer_types", None)
    return list(types) if types else None


def _takes_mask_per_layer_type(decoder) -> bool:
    """Whether the decoder's forward accepts a dict of masks keyed by layer type (transformers' models with mixed
    full and sliding layers do: `if not isinstance(causal_mask_mapping := attention_mask, dict)`)."""
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False
    return "attention_mask, dict)" in source


def can_share_prefix(model) -> tuple[bool, str]:
    """Whether `model` gives the plain path's results on shared rows, and why not when it does not.

    Needs: an attention implementation that takes a 4D mask (eager and sdpa a float one, flex_attention a
    BlockMask; flash attention takes none), rotary or learned positions taken from position_ids, attention-only layers
    (full or sliding window; a model with both must take a mask per layer type), and a decoder to hook.
    """
    lm = C.causal_lm(model)
    config = _text_config(lm)
    implementation = _attention_implementation(lm)
    if implementation not in MASK_ATTENTION:
        return False, (
            f"attention implementation {implementation!r} does not read a 4D mask (needs eager, sdpa or flex_attention)"
        )
    if getattr(config, "model_type", None) in RECURRENT_MODEL_TYPES or getattr(config, "layers_block_type", None):
        return False, f"{config.model_type} has recurrent or linear-attention layers (state a mask cannot restart)"
    layer_types = _layer_types(config)
    if layer_types and not set(layer_types) <= set(MASKED_LAYER_TYPES):
        other = sorted(set(layer_types) - set(MASKED_LAYER_TYPES))
        return False, f"layers of type {', '.join(other)} are not attention a mask describes"
    if getattr(config, "use_bidirectional_attention", False):
        return False, "the model attends bidirectionally"
    if "position_ids" not in inspect.signature(lm.forward).parameters:
        return False, "the model's forward takes no position_ids (positions would not restart for the rejected answer)"
    try:
        decoder = lm.get_decoder()
    except (AttributeError, NotImplementedError):
        return False, "the model has no get_decoder()"
    if layer_types and len(set(layer_types)) > 1 and not _takes_mask_per_layer_type(decoder):
        return False, "the model mixes full and sliding-window layers but takes no mask per layer type"
    return True, "ok"


def _attention_implementation(lm) -> str | None:
    config = _text_config(lm)
    return getattr(config, "_attn_implementation", None) or getattr(lm.config, "_attn_implementation", None)


def attention_masks(lm, batch: dict, dtype: torch.dtype):
    """The mask to pass as `attention_mask`: one [R, 1, T, T] float tensor (a FlexAttention `BlockMask` when the
    model runs flex_attention), or a dict of them keyed by layer type when the model has both full and
    sliding-window layers."""
    config = _text_config(lm)
    window = getattr(config, "sliding_window", None)
    layer_types = _layer_types(config)
    if _attention_implementation(lm) == FLEX_ATTENTION:

        def build(window):
            return block_mask(batch, window)
    else:

        def build(window):
            return additive_mask(allowed_attention(batch, window), dtype)

    if layer_types is None:
        # A single kind of layer: a configured window applies to all of them (Mistral, Mixtral, Phi-3).
        return build(window)
    masks = {kind: build(window if kind == "sliding_attention" else None) for kind in set(layer_types)}
    return next(iter(masks.values())) if len(masks) == 1 else masks


def model_inputs(lm, batch: dict) -> dict:
    """The forward's inputs for shared rows: the explicit mask always goes with the restarted position ids."""
    dtype = lm.get_input_embeddings().weight.dtype
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": attention_masks(lm, batch, dtype),
    }


def _decoder_output(model, decoder, **inputs) -> torch.Tensor:
    captured = {}

    def hook(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    try:
        device = inputs["input_ids"].device
        model(**inputs, use_cache=False, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
    finally:
        handle.remove()
    return captured["hidden"]


def answer_hidden(model, batch: dict, lm=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that predict each answer token, in the plain batch's order: what
    `cringe.chunked` consumes (the trainer's `_forward_hidden` output, less the head).

    `model` is called as given (a DDP wrapper's hooks stay); `lm` is the unwrapped causal LM (default: `model`).
    Returns hidden [N, D], targets [N], seq_index [N] (chosen 0..B-1, rejected B..2B-1).
    """
    lm = C.causal_lm(lm if lm is not None else model)
    hidden = _decoder_output(model, lm.get_decoder(), **model_inputs(lm, batch))
    row, col = batch["answer_index"].unbind(-1)
    return hidden[row, col], batch["answer_targets"], batch["seq_index"]


def plain_layout(values: torch.Tensor, seq_index: torch.Tensor, num_sequences: int, fill=0):
    """Per-token values [N, ...] in the plain order -> [num_sequences, L, ...] right-padded with `fill`, and a
    bool mask [num_sequences, L] of the real entries (L: the longest answer)."""
    counts = torch.bincount(seq_index, minlength=num_sequences)
    width = int(counts.max()) if counts.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(seq_index.numel(), device=seq_index.device) - starts[seq_index]
    out = values.new_full((num_sequences, width, *values.shape[1:]), fill)
    out[seq_index, column] = values
    mask = torch.zeros((num_sequences, width), dtype=torch.bool, device=seq_index.device)
    mask[seq_index, column] = True
    return out, mask


def answer_logits(model, batch: dict, lm=None, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the answer tokens in the plain path's layout, for the losses on logits
    (cringe.losses, the registry's `plain`): logits [2B, L, V], labels [2B, L] (ignore_index on padding), chosen
    sequences first. The model's own forward computes the logits (whatever its head does: softcapping, scaling)."""
    lm = C.causal_lm(lm if lm is not None else model)
    logits = model(**model_inputs(lm, batch), use_cache=False).logits
    row, col = batch["answer_index"].unbind(-1)
    n = int(batch["num_sequences"])
    padded, _ = plain_layout(logits[row, col], batch["seq_index"], n)
    labels, _ = plain_layout(batch["answer_targets"], batch["seq_index"], n, fill=ignore_index)
    return padded, labels
