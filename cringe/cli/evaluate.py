"""`cringe evaluate`: sample from a policy and a baseline on held-out prompts, score both, report win rate (with
its 95% interval), reward, KL(policy || baseline), length and repetition; with the instructions reward on
IFEval-format prompts, also IFEval's four accuracies (95% intervals) and the accuracy per instruction type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cringe.config import device_field, dtype_field, make_parser, parse, read_yaml, trust_remote_code_field
from cringe.durable.files import write_json
from cringe.errors import UserError


@dataclass
class EvaluateArguments:
    policy: str = field(metadata={"help": "the policy to evaluate: model folder, hub id or packaged spec"})
    baseline: str = field(
        metadata={
            "help": "the policy to compare against (also the KL reference), or a JSON "
            "file of reference outputs (AlpacaEval/AlpacaFarm: instruction, output, "
            "generator): cringe.reference"
        }
    )
    reward: str = field(
        metadata={
            "help": "YAML file of a reward source (type: callable | model | judge | instructions); with "
            "instructions (IFEval-format prompts), IFEval's four accuracies are reported too"
        }
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "held-out prompts (any accepted data format); not with a baseline of outputs (its instructions)"
        },
    )
    samples: int = field(default=1, metadata={"help": "samples per prompt and policy"})
    max_new_tokens: int = 48
    max_prompts: int | None = None
    device: str = device_field()
    backend: str = field(
        default="transformers",
        metadata={"help": "sampler (as in cringe iterate)", "choices": ("auto", "transformers", "vllm")},
    )
    work_dir: str | None = field(
        default=None,
        metadata={
            "help": "keep the samples and scores here (a run directory: rerun to continue); default: a temporary one"
        },
    )
    dtype: str | None = dtype_field()
    seed: int = 0
    trust_remote_code: bool = trust_remote_code_field()
    output: str | None = field(default=None, metadata={"help": "write the comparison as JSON here"})
    export_outputs: str | None = field(
        default=None,
        metadata={
            "help": "baseline of outputs: write the policy's outputs here in AlpacaEval's format (and the judgements "
            "beside it), for `alpaca_eval --model_outputs FILE`"
        },
    )
    generator: str | None = field(default=None, metadata={"help": "the policy's name in exported outputs"})


def parsers() -> dict:
    return {"": make_parser(EvaluateArguments, prog="cringe evaluate", description=__doc__)}


def main(argv: list[str]) -> None:
    (args,) = parse(parsers()[""], argv, 1)
    # Imported after parsing: they import torch, which `cringe evaluate --help` does without.
    from cringe.evaluate import comparison_table
    from cringe.instructions import accuracy_tables
    from cringe.loop.run import evaluate_policy
    from cringe.reference import evaluate_against_outputs, is_outputs_file
    from cringe.reference import report as reference_report

    if is_outputs_file(args.baseline):
        if args.prompts:
            raise UserError("--prompts: a baseline of outputs brings its own instructions; leave --prompts out")
        if args.samples != 1:
            raise UserError("--samples: against reference outputs the policy answers each instruction once")
        result = evaluate_against_outputs(
            args.policy,
            args.baseline,
            read_yaml(args.reward),
            max_new_tokens=args.max_new_tokens,
            max_prompts=args.max_prompts,
            dtype=args.dtype,
            device=args.device,
            seed=args.seed,
            trust_remote_code=args.trust_remote_code,
            generator=args.generator,
            export=args.export_outputs,
        )
        print(reference_report(result))
        if args.output:
            write_json(args.output, result)
        return
    if args.export_outputs:
        raise UserError("--export_outputs is for a baseline given as a file of outputs")
    if args.prompts is None:
        raise UserError("--prompts is required when the baseline is a model")
    if not Path(args.prompts).exists():
        raise UserError(f"--prompts {args.prompts}: no such file")
    result = evaluate_policy(
        args.policy,
        args.baseline,
        args.prompts,
        read_yaml(args.reward),
        work_dir=args.work_dir,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        max_prompts=args.max_prompts,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    tagged = [{**result, "model": args.policy}]
    print(comparison_table(tagged, "model", "policy"))
    ifeval = accuracy_tables(tagged, "model", "baseline")
    if ifeval:
        print("\n" + ifeval)
    w = result["win_rate"]
    print(
        f"\nwin rate of policy vs baseline: {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}..{w['ci_high']:.3f}, "
        f"n={w['n']}); KL(policy||baseline) ~ {result['kl']['mean']:.3f}"
    )
    if args.output:
        write_json(args.output, result)
