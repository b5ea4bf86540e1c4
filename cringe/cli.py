"""`cringe` command line: train | demo.

    cringe train --config run.yaml [--key value ...]

Every field of CringeConfig (which extends transformers' TrainingArguments), ModelArguments and DataArguments
is a YAML key and a command-line flag; flags override the file, as with `trl dpo --config`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

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


def parse_train_args(argv: list[str]):
    """(ModelArguments, DataArguments, CringeConfig) from an optional --config YAML plus flags."""
    import yaml
    from transformers import HfArgumentParser

    from .trainer import CringeConfig

    parser = HfArgumentParser((ModelArguments, DataArguments, CringeConfig), prog="cringe train")
    parser.add_argument("--config", default=None, help="YAML file of arguments; command-line flags override it")
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            parser.error("--config needs a path")
        config_path = argv[i + 1]
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
    model_args, data_args, config, _ = parser.parse_args_into_dataclasses(argv)
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
    commands = {"train": train, "demo": _demo}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(commands))
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    commands[argv[0]](argv[1:])


def _demo(argv: list[str]) -> None:
    from .demo import main as demo_main

    demo_main(argv)
