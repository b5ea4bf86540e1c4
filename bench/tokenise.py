"""Seconds to validate and tokenise a large pairwise dataset: the per-row path against Dataset.map, cold and warm.

    python bench/tokenise.py [--rows 50000] [--tokenizer smollm2] [--num-proc auto,1] [--workdir DIR]

The data is a synthetic JSONL shaped like HuggingFaceH4/ultrafeedback_binarized (a string prompt; chosen and
rejected conversations that repeat the user turn; `prompt_id`, `messages`, `score_*` columns), with answers of a
few hundred characters. Every path starts from the same file and ends with the same `PreparedData` rows (checked):

  * per-row: the file read as a list of dicts, validated and tokenised row by row in this process (what a
    list of dicts still gets; before this path existed, every input got it);
  * map, cold: `prepare(path)` with empty caches: the datasets JSON reader, then validation and tokenisation as
    `Dataset.map(batched=True, num_proc=N)`, each writing its cache;
  * map, warm: the same call again: the JSON reader and both map steps read their caches back.

The datasets cache lives in a fresh folder per run (`--workdir`, default a temporary one), so "cold" is cold.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

WORDS = (
    "the model answer question because therefore however data training helpful honest careful example "
    "result value first second finally consider step reason explain simple clear quick brown fox jumps over "
    "lazy dog, and. it is not only but also: which means that we can see"
).split()


def sentence(rnd: random.Random, n_chars: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(rnd.choice(WORDS))
    return " ".join(words).capitalize() + "."


def write_dataset(path: Path, n_rows: int, seed: int = 0) -> None:
    """ultrafeedback_binarized-shaped rows: prompts of ~80-200 characters, answers of ~200-600."""
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_rows):
            question = sentence(rnd, rnd.randint(80, 200)).rstrip(".") + "?"
            good, bad = sentence(rnd, rnd.randint(200, 600)), sentence(rnd, rnd.randint(200, 600))
            user = {"role": "user", "content": question}
            row = {
                "prompt": question,
                "prompt_id": f"{i:064x}",
                "chosen": [user, {"role": "assistant", "content": good}],
                "rejected": [user, {"role": "assistant", "content": bad}],
                "messages": [user, {"role": "assistant", "content": good}],
                "score_chosen": float(rnd.randint(6, 10)),
                "score_rejected": float(rnd.randint(1, 5)),
            }
            f.write(json.dumps(row) + "\n")


def timed(fn):
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def digest(rows: list[dict]) -> str:
    # Compare paths by digest: keeping one path's 50,000 rows alive while timing the next would bill it for the
    # garbage collector walking them.
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--tokenizer", default="smollm2", help="smollm2 | tiny | a tokenizer path or hub id")
    parser.add_argument("--num-proc", default="auto,1", help="comma-separated map process counts ('auto': cringe's)")
    parser.add_argument("--workdir", default=None, help="data file and datasets cache (default: a temporary folder)")
    parser.add_argument("--max-length", type=int, default=512, help="max_prompt_length and max_completion_length")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cringe-tokenise-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Before datasets is imported: it reads the cache location once.
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from cringe import data as D
    from cringe.data import formats as F
    from cringe.models import load_tokenizer

    spec = {"smollm2": "smollm2-135m-instruct", "tiny": "tiny-random-llama"}.get(args.tokenizer, args.tokenizer)
    tokenizer = load_tokenizer(spec)
    path = workdir / f"ultrafeedback-like-{args.rows}.jsonl"
    write_dataset(path, args.rows)
    size_mb = path.stat().st_size / 2**20
    print(f"{args.rows} rows, {size_mb:.0f} MB: {path}", flush=True)
    lengths = dict(max_prompt_length=args.max_length, max_completion_length=args.max_length)

    def per_row():
        return D.prepare(F._read_json_rows(str(path)), tokenizer, kind="pairwise", **lengths)

    data, seconds = timed(per_row)
    tokens = sum(len(r["prompt_ids"]) + sum(map(len, r["completion_ids"])) for r in data.rows)
    reference = digest(data.rows)
    del data
    print(f"per-row: {seconds:.1f}s", flush=True)
    results = [("per-row (list of dicts, one process)", 1, seconds)]
    for setting in args.num_proc.split(","):
        procs = D.auto_num_proc(args.rows) if setting == "auto" else int(setting)
        cache = workdir / f"hf-datasets-{procs}"
        os.environ["HF_DATASETS_CACHE"] = str(cache)
        import datasets

        datasets.config.HF_DATASETS_CACHE = cache  # each setting starts cold
        for state in ("cold", "warm"):
            data, seconds = timed(lambda: D.prepare(str(path), tokenizer, kind="pairwise", num_proc=procs, **lengths))  # noqa: B023
            assert digest(data.rows) == reference, "the map path must give the per-row path's rows"
            del data
            print(f"map, {procs} processes, {state}: {seconds:.1f}s", flush=True)
            results.append((f"Dataset.map, {state} cache", procs, seconds))

    per_row_seconds = results[0][2]
    lines = [
        f"# tokenise benchmark ({date.today().isoformat()})",
        "",
        f"{args.rows} ultrafeedback_binarized-shaped pairwise rows ({size_mb:.0f} MB JSONL, conversational), "
        f"{spec} tokenizer, "
        f"{tokens / args.rows:.0f} tokens per row, max lengths {args.max_length}; {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs available. Every path gives the same rows (checked).",
        "",
        "`python bench/tokenise.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "workdir")
        + "`",
        "",
        "| path | processes | seconds | rows/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {procs} | {seconds:.1f} | {args.rows / seconds:,.0f} | {per_row_seconds / seconds:.1f}x |"
        for name, procs, seconds in results
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tokenise-{date.today().isoformat()}.md"
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
