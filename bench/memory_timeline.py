"""Where the training peak is: torch.profiler's memory timeline of a few Pairwise Cringe steps, by category.

    python bench/memory_timeline.py [--hidden 1024 --layers 8 --vocab 32000 --tokens 8 --bf16]

A random Llama (untied head) trained for 3 steps on the CPU, once with the ordinary optimiser step and once with
`optimizer_in_backward`; prints, for each, the peak of live tensor memory and what it is made of (parameters,
optimiser state, activations, gradients, temporaries, autograd detail), and the memory at the moment the most
gradient is held. Live tensors, not RSS: the allocator's retained pages are not in it.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

# Column i + 1 of export_memory_timeline's sizes is torch.profiler._memory_profiler._CATEGORY_TO_INDEX's entry i.
CATEGORIES = [
    "(column 0)",
    "parameter",
    "optimizer state",
    "input",
    "temporary",
    "activation",
    "gradient",
    "autograd detail",
    "unknown",
]


def timeline(args, in_backward: bool, out_dir: Path) -> list[list[int]]:
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig, LlamaForCausalLM

    from cringe.models import build_tiny_tokenizer
    from cringe.trainer import CringeConfig, CringeTrainer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if args.bf16:
        model = model.to(torch.bfloat16)
    rng = random.Random(0)

    def text():
        return "".join(rng.choice("abcdefghij ") for _ in range(args.tokens))

    rows = [{"prompt": text(), "chosen": text(), "rejected": text()} for _ in range(12)]
    training = CringeConfig(
        output_dir=str(out_dir / "run"),
        per_device_train_batch_size=4,
        max_steps=3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        optimizer_in_backward=in_backward,
        max_grad_norm=0 if in_backward else 1.0,
        max_prompt_length=None,
        max_completion_length=None,
    )
    trainer = CringeTrainer(model=model, args=training, train_dataset=rows, processing_class=tokenizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        trainer.train()
    path = out_dir / f"timeline-{int(in_backward)}.json"
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return sizes


def describe(sizes: list[list[int]], index: int) -> str:
    parts = [f"{CATEGORIES[i]} {b / 2**20:.1f}" for i, b in enumerate(sizes[index]) if b]
    return f"{sum(sizes[index]) / 2**20:.1f} MiB = " + " + ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=8, help="characters (= tokens) per prompt and per completion")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (as bench/gpu.sh trains)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for in_backward in (False, True):
            sizes = timeline(args, in_backward, Path(tmp))
            total = [sum(s) for s in sizes]
            peak = max(range(len(total)), key=total.__getitem__)
            most_grad = max(range(len(total)), key=lambda i: sizes[i][CATEGORIES.index("gradient")])
            name = "optimizer_in_backward" if in_backward else "ordinary optimiser step"
            print(
                f"{name}:\n  peak:               {describe(sizes, peak)}\n"
                f"  most gradient held: {describe(sizes, most_grad)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
