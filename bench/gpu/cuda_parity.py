"""The chunked objectives equal the plain ones on a GPU, at a real model's size (tests/test_chunked.py checks the
same on the CPU at toy sizes).

    python bench/gpu/cuda_parity.py [--pairs 4] [--tokens 512] [--hidden 2048] [--vocab 128256]

Every objective's value and its gradients (hidden states, head weight) through `cringe.chunked` in fp32 (TF32 off)
and through `cringe.losses` on the full logits in fp32, each against the plain path in float64, as relative errors
||x - x64|| / ||x64||; sampled positives (k=3) come from the same uniforms on every path. Exits non-zero where the
chunked path is further from float64 than 2x the plain fp32 path (+ --tolerance).
"""

from __future__ import annotations

import argparse
import sys

import torch

from cringe import chunked as C
from cringe import losses as L


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def compare(plain_fn, chunked_fn, hidden, weight) -> dict:
    """Each fp32 path against the plain path in float64: the chunked path passes when its error is no larger than
    the plain fp32 path's own (within a factor of 2), i.e. chunking adds no error beyond fp32 rounding. Sums over
    thousands of tokens of log-probs near -10 leave the plain fp32 path itself ~1e-5 off in places."""
    results = {}
    for name, fn, dtype in (
        ("reference", plain_fn, torch.float64),
        ("plain", plain_fn, torch.float32),
        ("chunked", chunked_fn, torch.float32),
    ):
        h = hidden.detach().to(dtype).requires_grad_()
        w = weight.detach().to(dtype).requires_grad_()
        loss = fn(h, w)
        loss.backward()
        results[name] = (loss.detach(), h.grad, w.grad)
    out = {}
    for i, part in enumerate(("loss", "grad_hidden", "grad_weight")):
        out[part] = {path: rel(results[path][i], results["reference"][i]) for path in ("plain", "chunked")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="absolute slack on top of 2x the plain error")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu/cuda_parity.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device, b, t = args.device, args.pairs, args.tokens
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(2 * b, t, args.hidden, device=device, generator=g) * 0.5
    weight = torch.randn(args.vocab, args.hidden, device=device, generator=g) * args.hidden**-0.5
    labels = torch.randint(0, args.vocab, (2 * b, t), device=device, generator=g)
    labels[:, : t // 4] = L.IGNORE_INDEX  # prompts
    labels[b, -t // 8 :] = L.IGNORE_INDEX  # a shorter rejected completion
    mask = labels != L.IGNORE_INDEX
    seq_index = torch.arange(2 * b, device=device).unsqueeze(-1).expand_as(labels)[mask]
    targets = labels[mask]
    uniforms = torch.rand(int(mask[b:].sum()), device=device, generator=g)
    ref_logps = -torch.rand(2 * b, device=device, generator=g) * 100 - 500
    kw = dict(alpha=0.2, k=3, margin=1.0, temperature=1.0, uniforms=uniforms)

    def logits(h, w):
        return torch.nn.functional.linear(h, w)

    def plain_pc(h, w):
        z = logits(h, w)
        return L.pairwise_cringe_loss(z[:b], labels[:b], z[b:], labels[b:], **kw).loss

    def chunked_pc(h, w):
        return C.pairwise_cringe_loss(h[mask], w, None, targets, seq_index, b, chunk_size=args.chunk_size, **kw)[0]

    def plain_sft(h, w):
        return L.sft_loss(logits(h, w), labels).loss

    def chunked_sft(h, w):
        return C.sft_loss(h[mask], w, None, targets, chunk_size=args.chunk_size)

    def plain_dpo(h, w):
        total, _ = L.sequence_logps(logits(h, w), labels)
        losses, _, _ = L.dpo_loss(total[:b], total[b:], ref_logps[:b], ref_logps[b:], 0.1, "sigmoid")
        return losses.sum() / b

    def chunked_dpo(h, w):
        return C.dpo_family_loss(
            h[mask],
            w,
            None,
            targets,
            seq_index,
            b,
            ref_logps,
            beta=0.1,
            loss_type="sigmoid",
            chunk_size=args.chunk_size,
        )[0]

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"{name}: {2 * b} sequences x {t} tokens, hidden {args.hidden}, vocabulary {args.vocab}, chunk "
        f"{args.chunk_size}; relative error of each fp32 path (TF32 off) against the plain path in float64"
    )
    failed = []
    for loss_name, plain, chunked in (
        ("pairwise_cringe", plain_pc, chunked_pc),
        ("sft", plain_sft, chunked_sft),
        ("dpo", plain_dpo, chunked_dpo),
    ):
        errors = compare(plain, chunked, hidden, weight)
        print(
            f"  {loss_name:16s} "
            + "  ".join(f"{part}: plain {e['plain']:.1e} chunked {e['chunked']:.1e}" for part, e in errors.items()),
            flush=True,
        )
        failed += [
            f"{loss_name} {part}" for part, e in errors.items() if e["chunked"] > 2 * e["plain"] + args.tolerance
        ]
    print(
        f"PASS: chunked within 2x the plain fp32 error (+ {args.tolerance:.0e})"
        if not failed
        else f"FAIL: {', '.join(failed)}"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
