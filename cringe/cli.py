"""`cringe` command line: train | iterate | evaluate | demo.

    cringe train --config run.yaml [--key value ...]
    cringe iterate --config iter.yaml [--key value ...]      (dotted keys reach nested ones: --train.learning_rate 1e-5)
    cringe evaluate --policy DIR --baseline DIR --prompts FILE --reward reward.yaml [--samples 1] [--output out.json]
    cringe demo [--quick] [--output-dir DIR]

train: every field of CringeConfig (which extends transformers' TrainingArguments), ModelArguments and
DataArguments is a YAML key and a command-line flag; flags override the file, as with `trl dpo --config`.
iterate: the generate -> score -> pair -> train -> evaluate rounds of cringe.loop; rerun the same command to
resume an interrupted run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .models import TINY_SPEC


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=TINY_SPEC, metadata={"help": f"hub id, local path, or '{TINY_SPEC}'"})
    dtype: str = field(default="auto", metadata={"help": "float32 | bfloat16 | float16 | auto (as saved)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run model code from the hub (off by default)"})
    use_peft: bool = field(default=False, metadata={"help": "train LoRA adapters (needs peft)"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "default: peft's choice for the model"})


@dataclass
class DataArguments:
    dataset: str | None = field(default=None, metadata={"help": "JSON/JSONL/Parquet/CSV path or a datasets name"})
    dataset_config: str | None = None
    dataset_split: str = "train"
    eval_dataset: str | None = field(default=None, metadata={"help": "optional evaluation data, same formats"})


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(path given with --config, the other arguments)."""
    if "--config" not in argv:
        return None, argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise SystemExit("--config needs a path")
    return argv[i + 1], argv[:i] + argv[i + 2:]


def parse_train_args(argv: list[str]):
    """(ModelArguments, DataArguments, CringeConfig) from an optional --config YAML plus flags."""
    import yaml
    from transformers import HfArgumentParser

    from .trainer import CringeConfig

    parser = HfArgumentParser((ModelArguments, DataArguments, CringeConfig), prog="cringe train")
    parser.add_argument("--config", default=None, help="YAML file of arguments; command-line flags override it")
    config_path, argv = split_config_flag(argv)
    if config_path:
        with open(config_path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            parser.error(f"{config_path}: expected a mapping of argument names to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{config_path}: unknown keys {unknown}")
        parser.set_defaults(**values)
        # Required flags satisfied by the file are no longer required on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    model_args, data_args, config = parser.parse_args_into_dataclasses(argv)[:3]
    if data_args.dataset is None:
        parser.error("--dataset is required (in the YAML file or on the command line)")
    return model_args, data_args, config


def train(argv: list[str]) -> None:
    from .models import load_model_and_tokenizer
    from .trainer import CringeTrainer

    model_args, data_args, config = parse_train_args(argv)
    model, tokenizer = load_model_and_tokenizer(model_args.model_name_or_path, model_args.dtype,
                                                model_args.trust_remote_code)
    peft_config = None
    if model_args.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                                 lora_dropout=model_args.lora_dropout, target_modules=model_args.lora_target_modules,
                                 task_type="CAUSAL_LM")
    from .data import load_rows

    train_rows = load_rows(data_args.dataset, data_args.dataset_split, data_args.dataset_config)
    eval_rows = load_rows(data_args.eval_dataset) if data_args.eval_dataset else None
    trainer = CringeTrainer(model=model, args=config, train_dataset=train_rows, eval_dataset=eval_rows,
                            processing_class=tokenizer, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    save_for_inference(trainer, config.output_dir)


def save_for_inference(trainer, output_dir: str) -> None:
    """Save a model that `AutoModelForCausalLM.from_pretrained(output_dir)` loads; LoRA adapters are merged
    (and also kept under output_dir/adapter)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        if trainer.is_world_process_zero():
            model.save_pretrained(f"{output_dir}/adapter")
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir, safe_serialization=True)
            trainer.processing_class.save_pretrained(output_dir)
        return
    trainer.save_model(output_dir)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"train": train, "iterate": iterate, "evaluate": evaluate, "demo": _demo}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(commands))
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    commands[argv[0]](argv[1:])


def iterate(argv: list[str]) -> None:
    from .loop import IterativeRun, evaluation_table, load_config

    config_path, argv = split_config_flag(argv)
    evaluations = IterativeRun(load_config(config_path, argv)).run()
    if evaluations:
        print("\n" + evaluation_table(evaluations))


def evaluate(argv: list[str]) -> None:
    """Sample from a policy and a baseline on held-out prompts, score both, report win rate, reward, KL, length."""
    import json

    import yaml

    from .data import load_prompts
    from .evaluate import (format_table, kl_estimate, mean_by_prompt, mean_with_ci, sequence_logprobs,
                           text_metrics, win_rate)
    from .generation import SamplingConfig, TransformersSampler
    from .models import load_model, load_tokenizer
    from .rewards import load_reward_source

    parser = argparse.ArgumentParser(prog="cringe evaluate")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--baseline", required=True, help="the reference policy (also the KL reference)")
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--reward", required=True, help="YAML file of a reward source (type: callable|model|judge)")
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt and policy")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)

    with open(args.reward) as f:
        reward = load_reward_source(yaml.safe_load(f))
    tokenizer = load_tokenizer(args.baseline)
    prompts = load_prompts(args.prompts, tokenizer, limit=args.max_prompts)
    sampling = SamplingConfig(n=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed)
    text = {p.prompt_id: p.text for p in prompts}
    results, per_model = {}, {}
    for name, spec in (("policy", args.policy), ("baseline", args.baseline)):
        model = load_model(spec, tokenizer, args.dtype)
        samples = TransformersSampler(model, tokenizer).sample([p.ids for p in prompts], sampling)
        scores = reward.score([text[s.prompt_id] for s in samples], [s.completion for s in samples])
        per_model[name] = (model, samples, mean_by_prompt(samples, scores))
        results[name] = {"reward": mean_with_ci(scores, seed=args.seed),
                         **text_metrics([s.completion for s in samples], [s.num_tokens for s in samples],
                                        [s.finish_reason for s in samples])}
    policy_model, policy_samples, policy_scores = per_model["policy"]
    baseline_model, _, baseline_scores = per_model["baseline"]
    ids = sorted(policy_scores)
    results["win_rate"] = win_rate([policy_scores[i] for i in ids], [baseline_scores[i] for i in ids], seed=args.seed)
    rows = [{"prompt_ids": s.prompt_ids, "completion_ids": [s.completion_ids]} for s in policy_samples]
    results["kl_policy_to_baseline"] = kl_estimate(sequence_logprobs(policy_model, rows, tokenizer.pad_token_id),
                                                   sequence_logprobs(baseline_model, rows, tokenizer.pad_token_id))
    w = results["win_rate"]
    table = [{"model": name, "reward": results[name]["reward"]["mean"], "length": results[name]["length_tokens"],
              "d2": results[name]["distinct_2"], "rep": results[name]["repeated_3gram_rate"]}
             for name in ("policy", "baseline")]
    print(format_table(table, [("model", "model"), ("mean reward", "reward"), ("length", "length"),
                               ("distinct-2", "d2"), ("repeated 3-grams", "rep")]))
    print(f"\nwin rate of policy vs baseline: {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}..{w['ci_high']:.3f}, "
          f"sem {w['sem']:.3f}, n={w['n']}); KL(policy||baseline) ~ {results['kl_policy_to_baseline']['mean']:.3f}")
    if args.output:
        from .loop import write_json

        write_json(Path(args.output), results)


def _demo(argv: list[str]) -> None:
    from .demo import main as demo_main

    demo_main(argv)
