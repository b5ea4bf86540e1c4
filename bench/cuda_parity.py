"""The chunked objectives equal the plain ones on a GPU, at a real model's size (tests/test_chunked.py checks the
same on the CPU at toy sizes).

    python bench/cuda_parity.py [--pairs 4] [--tokens 512] [--hidden 2048] [--vocab 128256]

fp32 with TF32 off: every objective's value and its gradients (hidden states, head weight) through
`cringe.chunked` against `cringe.losses` on the full logits, as relative errors ||chunked - plain|| / ||plain||;
sampled positives (k=3) come from the same uniforms on both paths. Exits non-zero above --tolerance.
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
    results = []
    for fn in (plain_fn, chunked_fn):
        h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        loss = fn(h, w)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    (lp, hp, wp), (lc, hc, wc) = results
    return {"loss": rel(lc, lp), "grad_hidden": rel(hc, hp), "grad_weight": rel(wc, wp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/cuda_parity.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device, b, t = args.device, args.pairs, args.tokens
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(2 * b, t, args.hidden, device=device, generator=g) * 0.5
    weight = torch.randn(args.vocab, args.hidden, device=device, generator=g) * args.hidden ** -0.5
    labels = torch.randint(0, args.vocab, (2 * b, t), device=device, generator=g)
    labels[:, : t // 4] = L.IGNORE_INDEX  # prompts
    labels[b, -t // 8:] = L.IGNORE_INDEX  # a shorter rejected completion
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
        return C.dpo_family_loss(h[mask], w, None, targets, seq_index, b, ref_logps, beta=0.1, loss_type="sigmoid",
                                 chunk_size=args.chunk_size)[0]

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}: {2 * b} sequences x {t} tokens, hidden {args.hidden}, vocabulary "
          f"{args.vocab}, fp32 (TF32 off), chunk {args.chunk_size}; relative error chunked vs plain")
    worst = 0.0
    for name, plain, chunked in (("pairwise_cringe", plain_pc, chunked_pc), ("sft", plain_sft, chunked_sft),
                                 ("dpo", plain_dpo, chunked_dpo)):
        errors = compare(plain, chunked, hidden, weight)
        worst = max(worst, *errors.values())
        print(f"  {name:16s} " + "  ".join(f"{k} {v:.2e}" for k, v in errors.items()), flush=True)
    print(f"worst {worst:.2e} (tolerance {args.tolerance:.0e}): {'PASS' if worst <= args.tolerance else 'FAIL'}")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
