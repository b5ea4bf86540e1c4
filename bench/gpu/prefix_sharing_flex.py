"""Prefix sharing on a GPU: the plain two-row batch against shared rows, the shared mask as a dense float mask (sdpa)
and as a FlexAttention BlockMask (`cringe.prefix_sharing.block_mask`), forward + backward of Pairwise Cringe.

    python bench/gpu/prefix_sharing_flex.py [--shapes long,quick,hh,uf] [--pairs 8] [--results-dir bench/results]
    python bench/gpu/prefix_sharing_flex.py --device cpu --tiny      (the smoke path: seconds on a CPU)

On a lent GPU machine, from the repository root: `source bench/gpu/gpu_env.sh` first (cringe on PYTHONPATH), then
`"$PY" bench/gpu/prefix_sharing_flex.py --results-dir "$RESULTS_DIR"`. Its time on a GPU is unknown: FlexAttention
compiles per new batch shape (forward and backward), which likely dominates; `--shapes long,uf` halves it.

Written for a lent GPU; not run on one yet. Nothing is downloaded: the model is a random Llama of
SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 KV heads, 49,152-token vocabulary, tied head; the shapes
decide the time, not the weights), built in memory. Shapes (prompt / chosen / rejected tokens) are those of
bench/prefix_sharing.py.

First a parity check in fp32 (TF32 off) on 3 pairs of every shape: loss and gradients of each variant against the
plain sdpa path, as relative errors (exits non-zero above --tolerance). Then per shape, each variant in turn:
--warmup untimed steps (FlexAttention compiles in the first), then the median of --repeats steps in --dtype
(default bf16 on a GPU), collation and the mask's creation inside the timed step, and the peak of
`torch.cuda.max_memory_allocated` over those steps (reset before each variant). Variants:
  plain        2B rows (prompt + chosen, prompt + rejected), right-padded, sdpa: the trainer's chunked path
  plain-flash  the same under flash_attention_2, where flash_attn imports
  shared-sdpa  one [prompt | chosen | rejected] row per pair, the dense [R, 1, T, T] float mask (sdpa's
               math or memory-efficient kernel: a mask rules flash out)
  shared-flex  the same rows under flex_attention with the BlockMask (what `prefix_sharing` uses for a model
               loaded with attn_implementation="flex_attention")
Writes bench/results/prefix_sharing_flex-<date>-<device tag>.md.

On a CPU (`--device cpu`) PyTorch's FlexAttention has no backward, so every variant runs forward only there, and
flex runs eagerly (`torch.compiler.set_stance("force_eager")`); the numbers only show that the path works.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# name: (prompt, chosen, rejected, what it stands for); the same as bench/prefix_sharing.py's SHAPES
# (tests/test_prefix_sharing_flex.py checks it)
SHAPES = {
    "long": (160, 32, 32, "long-prompt chat (prompt/answer 5)"),
    "quick": (48, 16, 16, "the quick preset's pairs (3)"),
    "hh": (128, 64, 64, "HH-like (2)"),
    "uf": (100, 250, 250, "UltraFeedback-like (0.4)"),
}
# variant: (row layout, attention implementation)
VARIANTS = {
    "plain": ("plain", "sdpa"),
    "plain-flash": ("plain", "flash_attention_2"),
    "shared-sdpa": ("shared", "sdpa"),
    "shared-flex": ("shared", "flex_attention"),
}
SMOLLM2_SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
TINY_SHAPE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
PAD = 0


def build_model(tiny: bool, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**(TINY_SHAPE if tiny else SMOLLM2_SHAPE), pad_token_id=PAD, attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(device).train()


def set_attention(model, implementation: str) -> None:
    # The attention layers read the config at every call; a BlockMask or a float mask is built per batch for it.
    model.config._attn_implementation = implementation


def pair_rows(vocab: int, pairs: int, lengths: tuple[int, int, int], seed: int = 0) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    prompt, chosen, rejected = lengths
    return [{"prompt_ids": ids(prompt), "completion_ids": [ids(chosen), ids(rejected)]} for _ in range(pairs)]


def loss_of(model, rows: list[dict], layout: str, device):
    """The Pairwise Cringe loss through the fused chunked head, on the answer positions only."""
    import torch

    from cringe import chunked as C
    from cringe import prefix_sharing as P
    from cringe.data.collate import Collator

    if layout == "plain":
        batch = {k: v.to(device) for k, v in Collator(pad_token_id=PAD)(rows).items() if torch.is_tensor(v)}
        hidden, targets, mask = C.completion_hidden(
            model, model.get_decoder(), batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]
        )
        seq_index = C.row_of_position(mask)
    else:
        batch = {k: v.to(device) for k, v in P.build_shared_rows(rows, PAD).items()}
        hidden, targets, seq_index = P.answer_hidden(model, batch)
    head = model.get_output_embeddings()
    generator = torch.Generator(device=device).manual_seed(0)
    loss, _ = C.pairwise_cringe_loss(
        hidden, head.weight, head.bias, targets, seq_index, len(rows), alpha=0.2, generator=generator
    )
    return loss


def step(model, rows, layout: str, device, backward: bool) -> None:
    import torch

    model.zero_grad(set_to_none=True)
    if backward:
        loss_of(model, rows, layout, device).backward()
    else:
        with torch.no_grad():
            loss_of(model, rows, layout, device)


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def parity(model, variants: list[str], shapes: list[str], device, backward: bool, vocab: int) -> list[dict]:
    """fp32: each variant's loss (and gradients) against the plain sdpa path's, per shape."""
    import torch

    results = []
    for shape in shapes:
        rows = pair_rows(vocab, 3, SHAPES[shape][:3], seed=1)
        values = {}
        for name in variants:
            layout, implementation = VARIANTS[name]
            set_attention(model, implementation)
            model.zero_grad(set_to_none=True)
            with contextlib.nullcontext() if backward else torch.no_grad():
                loss = loss_of(model, rows, layout, device)
                if backward:
                    loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters()]) if backward else None
            values[name] = (loss.detach(), grads)
        base_loss, base_grads = values["plain"]
        for name in variants:
            loss, grads = values[name]
            results.append(
                {
                    "shape": shape,
                    "variant": name,
                    "loss": rel(loss, base_loss),
                    "grads": rel(grads, base_grads) if backward else None,
                }
            )
    return results


def timing(model, name: str, rows, device, args, backward: bool) -> dict:
    import torch

    layout, implementation = VARIANTS[name]
    set_attention(model, implementation)
    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        step(model, rows, layout, device, backward)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step(model, rows, layout, device, backward)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"seconds": seconds, "peak_gib": peak}


def flash_available() -> bool:
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:
        return False
    return is_flash_attn_2_available()


def render(meta: dict, parity_rows: list[dict], times: dict, args) -> str:
    kind = "forward + backward" if meta["backward"] else "forward only (no FlexAttention backward on a CPU)"
    lines = [
        "# Prefix sharing on a GPU: plain rows against shared rows (dense mask, FlexAttention BlockMask)",
        "",
        f"Command: `python bench/gpu/prefix_sharing_flex.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {meta['date']}; device: {meta['device_name']}; torch {meta['torch']}, transformers "
        f"{meta['transformers']}",
        "",
        f"{meta['model']}, random weights, {meta['dtype']}; {kind} of Pairwise Cringe through the fused chunked "
        f"head; {args.pairs} pairs per step; median of {args.repeats} steps after {args.warmup} warm-up; peak "
        "`torch.cuda.max_memory_allocated` over the timed steps.",
        "",
        "| shape (prompt / chosen / rejected) | variant | s / step | pairs/s | speed-up | peak GiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for shape, per_variant in times.items():
        prompt, chosen, rejected, label = SHAPES[shape]
        base = statistics.median(per_variant["plain"]["seconds"])
        for name, r in per_variant.items():
            s = statistics.median(r["seconds"])
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
            lines.append(
                f"| {label}: {prompt} / {chosen} / {rejected} | {name} | {s:.4f} | {args.pairs / s:.1f} "
                f"| {base / s:.2f}x | {peak} |"
            )
    lines += [
        "",
        "Parity (fp32, TF32 off, 3 pairs per shape): relative error of each variant's loss and gradients against "
        "the plain sdpa path's.",
        "",
        "| shape | variant | loss | gradients |",
        "|---|---|---:|---:|",
        *(
            f"| {r['shape']} | {r['variant']} | {r['loss']:.2e} | "
            f"{'n/a' if r['grads'] is None else format(r['grads'], '.2e')} |"
            for r in parity_rows
        ),
        "",
        "Per-step seconds:",
        "",
        *(
            f"- {shape} {name}: {', '.join(f'{t:.4f}' for t in r['seconds'])}"
            for shape, per_variant in times.items()
            for name, r in per_variant.items()
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model and shapes an eighth as long (smoke)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default=None, help="timing dtype (default: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative parity error accepted")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    import torch
    import transformers

    from cringe.durable.files import write_atomic

    device = torch.device(args.device)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")
    if args.tiny:
        for name in shapes:  # an eighth as long, at least 2 tokens each
            *lengths, label = SHAPES[name]
            SHAPES[name] = (*(max(2, n // 8) for n in lengths), label)
    cuda = device.type == "cuda"
    backward = device.type != "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    stance = contextlib.nullcontext() if cuda else torch.compiler.set_stance("force_eager")
    # flash attention takes half precision only
    with_flash = cuda and dtype in (torch.bfloat16, torch.float16) and flash_available()
    variants = [v for v in VARIANTS if v != "plain-flash" or with_flash]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    model = build_model(args.tiny, device)
    vocab = model.config.vocab_size
    with stance:
        parity_rows = parity(model, [v for v in variants if v != "plain-flash"], shapes, device, backward, vocab)
        for r in parity_rows:
            print(f"parity {r['shape']} {r['variant']}: loss {r['loss']:.2e} grads {r['grads']}", flush=True)
        model.to(dtype)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
        times = {}
        for shape in shapes:
            rows = pair_rows(vocab, args.pairs, SHAPES[shape][:3])
            times[shape] = {name: timing(model, name, rows, device, args, backward) for name in variants}
            print(shape, {n: statistics.median(r["seconds"]) for n, r in times[shape].items()}, flush=True)

    date = datetime.date.today().isoformat()
    device_name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    tag = device_name.split()[-1].lower() if cuda else "cpu"
    meta = {
        "date": date,
        "device_name": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "a 2-layer Llama (hidden 64)" if args.tiny else "a Llama of SmolLM2-135M's shape",
        "dtype": str(dtype).removeprefix("torch."),
        "backward": backward,
    }
    text = render(meta, parity_rows, times, args)
    out = Path(args.results_dir) / f"prefix_sharing_flex-{date}-{tag}{'-tiny' if args.tiny else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)
    print(text)
    worst = max(max(r["loss"], r["grads"] or 0.0) for r in parity_rows)
    if worst > args.tolerance:
        raise SystemExit(f"parity: a variant is {worst:.2e} from the plain path (tolerance {args.tolerance:.0e})")


if __name__ == "__main__":
    main()
