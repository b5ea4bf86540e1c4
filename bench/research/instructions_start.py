"""How often the start model follows the instruction testbed's held-out instructions, before any training.

    python bench/research/instructions_start.py --prompts 48 --n 8 --max-new-tokens 128

Samples SmolLM2-135M-Instruct (the packaged offline copy) on held-out prompts of `cringe.testbeds.instructions`
(every short-answer type, so that the defaults can be chosen from the result) at temperature 1, checks each
answer with IFEval's checkers (`cringe.instructions`), and writes bench/results/instructions_start-<date>-<cpu>.md:
per instruction type the strict and loose rates, IFEval's four accuracies, pass@n (a prompt passes when at
least one of its first n samples follows all its instructions, strict), how many answers were cut at
max_new_tokens, how often a prompt's samples all score the same (a pair from them says nothing), and answer
lengths. Needs the `instructions` extra and the offline model (`make demo` installs both).
"""

import argparse
import datetime
import statistics
import time
from collections import defaultdict
from pathlib import Path

from cringe.machine import cpu_label

RESULTS = Path(__file__).resolve().parents[1] / "results"


def pass_at(outcomes: list[bool], n: int) -> bool:
    return any(outcomes[:n])


def percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--min-words", type=int, default=0, help="the score's length guard, as in score_rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from cringe.data import load_prompts
    from cringe.durable.files import write_atomic
    from cringe.generation import SamplingConfig, TransformersSampler
    from cringe.instructions import accuracies, score_rows
    from cringe.models import SMOLLM2_SPEC, cpu_prefers_bf16, load_model_and_tokenizer
    from cringe.testbeds import instructions as T

    rows = T.make_prompts(4 * args.prompts, args.prompts, seed=args.seed, types=T.SHORT_ANSWER_TYPES)["heldout"]
    dtype = "bfloat16" if cpu_prefers_bf16() else "float32"
    model, tokenizer = load_model_and_tokenizer(SMOLLM2_SPEC, dtype=dtype)
    prompts = load_prompts(rows, tokenizer)
    config = SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=args.seed)
    started = time.time()
    samples = TransformersSampler(model, tokenizer).sample([p.ids for p in prompts], config)
    seconds = time.time() - started
    results = score_rows(
        [rows[s.prompt_id] for s in samples], [s.completion for s in samples], min_words=args.min_words
    )

    per_type: dict[str, list[tuple[bool, bool, bool]]] = defaultdict(list)  # (strict, loose, cut)
    per_prompt: dict[int, list[bool]] = defaultdict(list)
    scores: dict[int, list[float]] = defaultdict(list)
    for sample, result in zip(samples, results):
        cut = sample.finish_reason == "length"
        for instruction_id, strict, loose in zip(result["instruction_id_list"], result["strict"], result["loose"]):
            per_type[instruction_id].append((strict, loose, cut))
        per_prompt[sample.prompt_id].append(result["label"])
        scores[sample.prompt_id].append(result["score"])

    lines = [
        f"# The start model on the instruction testbed's held-out prompts ({datetime.date.today()})",
        "",
        f"`python bench/research/instructions_start.py --prompts {args.prompts} --n {args.n} "
        f"--max-new-tokens {args.max_new_tokens} --min-words {args.min_words} --seed {args.seed}"
        f"{f' --out {args.out}' if args.out else ''}`: "
        f"SmolLM2-135M-Instruct ({dtype}), temperature 1, top_p 1, top_k off; {len(prompts)} held-out prompts x "
        f"{args.n} samples; IFEval's checkers through `cringe.instructions` (if-verifiable 0.1.2). "
        f"Sampling took {seconds:.0f} s.",
        "",
        "## Per instruction type",
        "",
        "Rates over every (sample, instruction) of that type; 'cut' is the share of those samples cut at "
        "max_new_tokens, 'strict if not cut' the strict rate on the others.",
        "",
        "| instruction | n | strict | loose | cut | strict if not cut |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for instruction_id in sorted(per_type, key=lambda k: -sum(s for s, _, _ in per_type[k]) / len(per_type[k])):
        v = per_type[instruction_id]
        whole = [s for s, _, c in v if not c]
        lines.append(
            f"| {instruction_id} | {len(v)} | {percent(sum(s for s, _, _ in v) / len(v))} "
            f"| {percent(sum(lo for _, lo, _ in v) / len(v))} | {percent(sum(c for _, _, c in v) / len(v))} "
            f"| {percent(sum(whole) / len(whole)) if whole else '-'} |"
        )
    acc = accuracies(results)
    lines += [
        "",
        "## IFEval's four accuracies (95% interval, prompts resampled)",
        "",
        "| | mean | 95% CI |",
        "|---|---:|---|",
    ]
    for name, a in acc.items():
        lines.append(f"| {name} | {percent(a['mean'])} | {percent(a['ci_low'])} - {percent(a['ci_high'])} |")
    lines += ["", "## pass@n (all instructions followed, strict, by at least one of a prompt's first n samples)", ""]
    lines += ["| n | " + " | ".join(str(n) for n in (1, 2, 4, 8) if n <= args.n) + " |"]
    lines += ["|---|" + "---:|" * len([n for n in (1, 2, 4, 8) if n <= args.n])]
    lines += [
        "| pass@n | "
        + " | ".join(
            percent(sum(pass_at(v, n) for v in per_prompt.values()) / len(per_prompt))
            for n in (1, 2, 4, 8)
            if n <= args.n
        )
        + " |"
    ]
    by_size: dict[int, list[float]] = defaultdict(list)
    for prompt_id, outcomes in per_prompt.items():
        by_size[len(rows[prompt_id]["instruction_id_list"])].append(sum(outcomes) / len(outcomes))
    lines += ["", "Prompt-level strict rate by number of instructions: "]
    lines[-1] += "; ".join(f"{k}: {percent(statistics.mean(v))} ({len(v)} prompts)" for k, v in sorted(by_size.items()))
    tokens = [s.num_tokens for s in samples]
    words = [r["words"] for r in results]
    cut = sum(s.finish_reason == "length" for s in samples) / len(samples)
    all_tied = sum(len(set(v)) == 1 for v in scores.values()) / len(scores)
    lines += [
        "",
        "## Lengths and ties",
        "",
        f"- cut at max_new_tokens ({args.max_new_tokens}): {percent(cut)} of samples",
        f"- tokens per answer: median {statistics.median(tokens):.0f}, mean {statistics.mean(tokens):.0f}, "
        f"max {max(tokens)}; words: median {statistics.median(words):.0f}, "
        f"under 10 words: {percent(sum(w < 10 for w in words) / len(words))}",
        f"- prompts whose {args.n} samples all have the same loose fraction (no pair to learn from): {percent(all_tied)}",
        f"- mean loose fraction (the default reward): {statistics.mean(r['score'] for r in results):.3f}",
    ]
    examples = [(s, r) for s, r in zip(samples, results) if s.sample_id == 0][:3]
    lines += ["", "## First samples", ""]
    for s, r in examples:
        lines += [
            f"**{rows[s.prompt_id]['prompt'][-1]['content']}**",
            "",
            "```",
            s.completion.strip(),
            "```",
            f"strict {r['strict']}, loose {r['loose']}, {s.finish_reason}",
            "",
        ]
    out = args.out or RESULTS / f"instructions_start-{datetime.date.today()}-{cpu_label()}.md"
    write_atomic(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
