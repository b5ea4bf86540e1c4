"""`cringe sample`: N completions per prompt from a model, to a JSONL file with token ids, text, finish reason and
seed (transformers on the GPU or CPU, or one vLLM engine: --backend vllm, engine options as --vllm.KEY VALUE).
Rerun to resume: finished shards of 64 prompts are kept. It runs the loop's sampling job
(cringe.loop.executor.SampleJob), so the verb and the loop's stage sample alike."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from cringe.config import device_field, dtype_field, make_parser, parse_with_sections, trust_remote_code_field
from cringe.generation import SamplingConfig
from cringe.loop.executor import Loaded, SampleJob


@dataclass
class SampleArguments:
    model: str = field(metadata={"help": "the policy: model folder, hub id or packaged spec"})
    prompts: str = field(metadata={"help": "prompts file (any accepted data format; the prompt column is used)"})
    output: str = field(metadata={"help": "samples.jsonl to write (atomically; a killed run resumes its shards)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer spec (default: the model's)"})
    backend: str = field(
        default="auto",
        metadata={"help": "auto: vLLM when installed with a GPU", "choices": ("auto", "transformers", "vllm")},
    )
    device: str = device_field()
    dtype: str | None = dtype_field()
    start: int = field(default=0, metadata={"help": "first prompt position (with --count: a wrapping slice)"})
    count: int | None = field(default=None, metadata={"help": "how many prompts (default: all)"})
    max_prompts: int | None = None
    max_prompt_length: int = 512
    on_invalid: str = field(
        default="error", metadata={"help": "prompts that fail validation: error or skip", "choices": ("error", "skip")}
    )
    trust_remote_code: bool = trust_remote_code_field()


def parsers() -> dict:
    return {
        "": make_parser(
            (SampleArguments, SamplingConfig),
            prog="cringe sample",
            description=__doc__,
            epilog="sections: vllm (engine options passed to vllm.LLM, e.g. --vllm.gpu_memory_utilization 0.8)",
        )
    }


def run_sample(args: SampleArguments, sampling: SamplingConfig, engine_options: dict | None = None):
    """The sampling stage: prompts read and tokenised as for training, sampled, written to args.output. Under
    `accelerate launch` each process samples its share of the shards (one GPU each). Returns the samples (on
    process 0; [] on the others)."""
    job = SampleJob(
        model=args.model,
        tokenizer=args.tokenizer or args.model,
        prompts=args.prompts,
        output=args.output,
        sampling=dataclasses.asdict(sampling),
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        start=args.start,
        count=args.count,
        max_prompts=args.max_prompts,
        max_prompt_length=args.max_prompt_length,
        on_invalid=args.on_invalid,
        trust_remote_code=args.trust_remote_code,
        engine_options=engine_options or {},
    )
    return job.run(Loaded())


def main(argv: list[str]) -> None:
    (args, sampling), sections = parse_with_sections(parsers()[""], argv, 2, {"vllm": None})
    t0 = time.time()
    samples = run_sample(args, sampling, sections.get("vllm"))
    if not samples:  # a data-parallel worker other than the first: process 0 wrote the file
        return
    tokens = sum(s.num_tokens for s in samples)
    seconds = time.time() - t0
    print(
        f"{len(samples)} samples, {tokens} new tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.0f} "
        f"tokens/s) -> {args.output}"
    )
