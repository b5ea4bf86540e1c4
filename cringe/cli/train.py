"""`cringe train`: fine-tune a causal LM with Pairwise Cringe, binary Cringe, DPO/IPO/hinge or SFT on a dataset in
TRL's formats (transformers' Trainer; `accelerate launch -m cringe train` for many processes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cringe.config import dtype_field, make_parser, parse, trust_remote_code_field
from cringe.data import load_rows
from cringe.durable.files import write_json
from cringe.errors import UserError
from cringe.models import TINY_SPEC, load_model, load_model_and_tokenizer, save_for_inference
from cringe.trainer import CringeConfig, CringeTrainer, LoraArguments


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=TINY_SPEC, metadata={"help": f"hub id, local path, or '{TINY_SPEC}'"})
    dtype: str | None = dtype_field("weights dtype (default and auto: as saved)")
    trust_remote_code: bool = trust_remote_code_field()
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "DPO family: the reference model (default: a frozen copy of the start)"}
    )
    save_model_to: str | None = field(
        default=None, metadata={"help": "where the trained model is saved (default: output_dir)"}
    )


@dataclass
class DataArguments:
    dataset: str | None = field(default=None, metadata={"help": "JSON/JSONL/Parquet/CSV path or a datasets name"})
    dataset_config: str | None = field(default=None, metadata={"help": "the datasets configuration name"})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "split of the same dataset to evaluate on (e.g. test_prefs)"}
    )
    data_description: str | None = field(default=None, metadata={"help": "what the model card says about the data"})
    eval_dataset: str | None = field(default=None, metadata={"help": "separate evaluation data, same formats"})


ARGUMENTS = (ModelArguments, DataArguments, LoraArguments, CringeConfig)


def parsers() -> dict:
    return {"": make_parser(ARGUMENTS, prog="cringe train", description=__doc__)}


def parse_train_args(argv: list[str]):
    """(ModelArguments, DataArguments, LoraArguments, CringeConfig) from `--config FILE` plus flags."""
    model_args, data_args, lora_args, config = parse(parsers()[""], argv, len(ARGUMENTS))
    if data_args.dataset is None:
        raise UserError("--dataset is required (in the YAML file or on the command line)")
    return model_args, data_args, lora_args, config


def main(argv: list[str]) -> None:
    model_args, data_args, lora_args, config = parse_train_args(argv)
    # Data first: a bad row or a missing file is reported before a model is loaded.
    train_rows = load_rows(data_args.dataset, data_args.dataset_split, data_args.dataset_config)
    eval_rows = None
    if data_args.eval_dataset:
        eval_rows = load_rows(data_args.eval_dataset)
    elif data_args.dataset_test_split:
        eval_rows = load_rows(data_args.dataset, data_args.dataset_test_split, data_args.dataset_config)
    peft_config = lora_args.peft_config()
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path, model_args.dtype, model_args.trust_remote_code
    )
    ref_model = None
    if model_args.ref_model_name_or_path:
        ref_model = load_model(
            model_args.ref_model_name_or_path, tokenizer, model_args.dtype, model_args.trust_remote_code
        )
    trainer = CringeTrainer(
        model=model,
        args=config,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=peft_config,
        ref_model=ref_model,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    target = model_args.save_model_to or config.output_dir
    save_for_inference(
        trainer,
        target,
        base_model=model_args.model_name_or_path,
        data=data_args.data_description or f"`{data_args.dataset}` (split {data_args.dataset_split})",
    )
    if trainer.is_world_process_zero():
        write_json(Path(target) / "train_log.json", trainer.state.log_history)
