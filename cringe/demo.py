"""`cringe demo`: an end-to-end run of every loss, offline, in well under a minute.

Until the offline sentiment-control reproduction lands (DESIGN §4), the demo trains a small random Llama (4 layers, width 128) on a
synthetic preference task (a kind word about a film preferred over an unkind one, 48 training pairs), one model per loss,
and measures on 32 held-out prompts what the model now writes (greedy): the share of kind words, of unkind
words, and the share of held-out pairs whose preferred answer has the higher per-token likelihood.
It is a check that the whole pipeline learns, not a claim about the methods' relative merit.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

GOOD = ["great", "lovely", "superb", "moving"]
BAD = ["awful", "dull", "boring", "ugly"]
FILMS = ["the heist film", "this comedy", "the space opera", "that musical", "the documentary", "this thriller"]


def toy_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"One word for {rng.choice(FILMS)} (#{seed}-{i}):", "chosen": " " + rng.choice(GOOD),
             "rejected": " " + rng.choice(BAD)} for i in range(n)]


@torch.no_grad()
def evaluate_toy(model, tokenizer, rows) -> dict[str, float]:
    """Greedy completions of the held-out prompts classified as kind / unkind, and per-token preference accuracy."""
    from .data import Collator, prepare
    from .losses import sequence_logps

    model.eval()
    data = prepare(rows, tokenizer, kind="pairwise")
    batch = Collator(tokenizer.pad_token_id)(data.rows)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    total, count = sequence_logps(logits, batch["labels"][:, 1:])
    mean = total / count
    half = len(rows)
    kind = unkind = 0
    for row in data.rows:
        prompt = torch.tensor([row["prompt_ids"]])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip()
        kind += any(text.startswith(g) for g in GOOD)
        unkind += any(text.startswith(b) for b in BAD)
    return {"kind_rate": kind / half, "unkind_rate": unkind / half,
            "pref_acc_per_token": (mean[:half] > mean[half:]).float().mean().item()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cringe demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="four epochs instead of twelve")
    args = parser.parse_args(argv)

    from .models import build_tiny_model, build_tiny_tokenizer
    from .trainer import LOSSES, CringeConfig, CringeTrainer

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    train, held_out = toy_pairs(48, seed=1), toy_pairs(32, seed=2)
    start = evaluate_toy(build_tiny_model(tokenizer, hidden_size=128, num_layers=4), tokenizer, held_out)
    results = []
    for loss in LOSSES:
        t0 = time.time()
        model = build_tiny_model(tokenizer, hidden_size=128, num_layers=4)
        config = CringeConfig(output_dir=str(out / loss), loss=loss, per_device_train_batch_size=8,
                              num_train_epochs=4 if args.quick else 12, learning_rate=3e-3, lr_scheduler_type="constant",
                              logging_steps=6, save_strategy="no", disable_tqdm=True, report_to="none", use_cpu=True, seed=0)
        trainer = CringeTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.append({"loss": loss, "first_loss": losses[0], "last_loss": losses[-1],
                        **evaluate_toy(model, tokenizer, held_out), "seconds": round(time.time() - t0, 1)})
    lines = ["# cringe demo (small random Llama, synthetic preferences)", "",
             f"Untrained model: kind {start['kind_rate']:.2f}, unkind {start['unkind_rate']:.2f}, "
             f"per-token preference accuracy {start['pref_acc_per_token']:.2f}", "",
             "| loss | first logged loss | last logged loss | kind words (greedy) | unkind words (greedy) "
             "| held-out per-token pref. acc. | seconds |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['loss']} | {r['first_loss']:.3f} | {r['last_loss']:.3f} | {r['kind_rate']:.2f} | "
              f"{r['unkind_rate']:.2f} | {r['pref_acc_per_token']:.2f} | {r['seconds']} |" for r in results]
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"untrained": start, "results": results}, indent=2))
    print("\n" + report + f"\nwritten to {out}/report.md")
