"""Is bfloat16 the fast path on this CPU? Matrix products and a SmolLM2-sized MLP block, fp32 against bf16, with
the CPU's native bf16 support as /proc/cpuinfo reports it (avx512_bf16, amx_bf16).

    python bench/cpu_dtype.py

Why: the loop's CPU defaults (`cringe.models.cpu_prefers_bf16`) follow this. On a CPU with AMX or AVX512-BF16
bf16 products run in hardware (an Intel Xeon: 0.29x the fp32 time); on one without (AMD Zen 3, this project's
machine on 2026-11-28) torch emulates bf16 and it is 28-241x slower than fp32. Best of 5 after a warm-up (one
timed call when a call takes over 2 s), all threads.
"""

from __future__ import annotations

import os
import time


def best(fn, reps: int = 5) -> float:
    """Best of `reps` after a warm-up; a call slower than 2 s is timed once (emulated bf16 can be 100x fp32)."""
    t = time.perf_counter()
    fn()
    if time.perf_counter() - t > 2.0:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    import torch
    from denormals import cpu_name  # bench/denormals.py, beside this script

    from cringe.models import cpu_bf16_flags

    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}; native bf16: {cpu_bf16_flags() or 'none'}\n")
    print("| work | fp32 ms | bf16 ms | bf16 / fp32 |\n|---|---|---|---|")
    torch.manual_seed(0)
    shapes = {
        "matmul 1024x1024 @ 1024x1024": ((1024, 1024), (1024, 1024)),
        "matmul 64x576 @ 576x49152 (SmolLM2's LM head, 64 tokens)": ((64, 576), (576, 49152)),
    }
    for name, (a_shape, b_shape) in shapes.items():
        a, b = torch.randn(a_shape), torch.randn(b_shape)
        fp32 = best(lambda: a @ b)  # noqa: B023 (called at once)
        a16, b16 = a.bfloat16(), b.bfloat16()
        bf16 = best(lambda: a16 @ b16)  # noqa: B023 (called at once)
        print(f"| {name} | {fp32 * 1e3:.1f} | {bf16 * 1e3:.1f} | {bf16 / fp32:.2f} |")
    mlp = torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 576))
    x = torch.randn(64, 576, requires_grad=True)

    def step(model, inp):
        model(inp).sum().backward()

    fp32 = best(lambda: step(mlp, x))
    mlp16, x16 = mlp.bfloat16(), x.detach().bfloat16().requires_grad_(True)
    bf16 = best(lambda: step(mlp16, x16))
    print(
        f"| MLP block forward+backward, 64 tokens (SmolLM2 width) | {fp32 * 1e3:.1f} | {bf16 * 1e3:.1f} | "
        f"{bf16 / fp32:.2f} |"
    )


if __name__ == "__main__":
    main()
