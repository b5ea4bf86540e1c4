"""`cringe train` under the shipped FSDP2 and DeepSpeed ZeRO-2/3 accelerate configs on one GPU, against the plain
single-process run: the default chunked Pairwise Cringe loss (gathered under FSDP2, sent to the plain path with a
warning under ZeRO-3) must move the weights as the unsharded run does. A random 8-layer Llama, 16 pairs, 3 SGD
steps, fp32 (mixed precision off, so the engines' differences are only summation order).

    python bench/gpu/gpu_sharded_train.py [--results-dir bench/results]

Written for a lent GPU; ZeRO rows run only where `import deepspeed` works. Prints a table of the largest weight
difference of each engine against the plain run, and the warnings each engine's log showed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/cringe-sharded")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    import importlib.util
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from cringe.models import build_tiny_tokenizer

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    model.save_pretrained(work / "start")
    tokenizer.save_pretrained(work / "start")
    data = work / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f"Question {i}: is it good?",
                    "chosen": " yes, very good" * (1 + i % 3),
                    "rejected": " no" * (2 + i % 4),
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    common = [
        "train",
        "--model_name_or_path",
        str(work / "start"),
        "--dataset",
        str(data),
        "--loss",
        "pairwise_cringe",
        "--optim",
        "sgd",
        "--learning_rate",
        "0.1",
        "--max_steps",
        "3",
        "--max_grad_norm",
        "0",
        "--per_device_train_batch_size",
        "16",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--dtype",
        "float32",
    ]
    runs = {
        "plain (1 process, chunked)": [sys.executable, "-m", "cringe"],
        "plain (1 process, chunked_loss false)": [sys.executable, "-m", "cringe"],
    }
    configs = {"FSDP2": "fsdp.yaml"}
    if importlib.util.find_spec("deepspeed"):
        configs.update({"ZeRO-2": "deepspeed_zero2.yaml", "ZeRO-3": "deepspeed_zero3.yaml"})
    for name, config in configs.items():
        runs[name] = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "accelerate_configs" / config),
            "--num_processes",
            "1",
            "--mixed_precision",
            "no",
            "-m",
            "cringe",
        ]
    results = {}
    for name, launcher in runs.items():
        extra = ["--chunked_loss", "false"] if "chunked_loss false" in name else []
        out = work / f"run-{len(results)}"
        t0 = time.time()
        proc = subprocess.run(launcher + common + extra + ["--output_dir", str(out)], capture_output=True, text=True)
        warnings = sorted(
            {
                line.split("WARNING", 1)[1].strip()[:120]
                for line in proc.stderr.splitlines()
                if "chunked loss off" in line
            }
        )
        results[name] = {
            "rc": proc.returncode,
            "seconds": time.time() - t0,
            "dir": out,
            "warnings": warnings,
            "tail": proc.stderr[-1500:],
        }
    base = load_file(str(results["plain (1 process, chunked)"]["dir"] / "model.safetensors"))
    start = load_file(str(work / "start" / "model.safetensors"))
    moved = max((base[k] - start[k]).abs().max().item() for k in base)
    lines = [
        "# `cringe train` under sharding engines vs the plain run (one GPU)",
        "",
        f"`python bench/gpu/gpu_sharded_train.py` · {time.strftime('%Y-%m-%d %H:%M %Z')} · "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "",
        f"Largest weight change of the plain run from the start: {moved:.3e}.",
        "",
        "| run | exit | s | largest weight difference vs plain chunked | chunked-loss warnings |",
        "|---|---|---|---|---|",
    ]
    failed = False
    for name, r in results.items():
        diff = ""
        if r["rc"] == 0 and (r["dir"] / "model.safetensors").exists():
            other = load_file(str(r["dir"] / "model.safetensors"))
            if sorted(other) != sorted(base):  # e.g. a tied head saved twice
                print(f"--- {name}: saved keys differ from the plain run's: {sorted(set(other) ^ set(base))}")
                failed = True
            diff = f"{max((other[k] - base[k]).abs().max().item() for k in base if k in other):.3e}"
            failed |= float(diff) > 1e-3 * moved  # within 0.1% of how far the weights moved
        else:
            failed = True
            print(f"--- {name} failed:\n{r['tail']}")
        lines.append(f"| {name} | {r['rc']} | {r['seconds']:.0f} | {diff} | {'; '.join(r['warnings']) or '-'} |")
    table = "\n".join(lines)
    print(table)
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.results_dir) / f"gpu_sharded_train-{time.strftime('%Y-%m-%d')}.md").write_text(table + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
