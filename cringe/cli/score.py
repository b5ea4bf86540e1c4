"""`cringe score`: one reward per sample of a `cringe sample` file, to a JSONL file (prompt_id, sample_id, score).
The reward source is a YAML file (--reward FILE) or the `reward:` section of --config, refined by
--reward.KEY VALUE."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cringe.config import device_field, make_parser, parse_with_sections, pop_flag, read_yaml
from cringe.errors import UserError


@dataclass
class ScoreArguments:
    samples: str = field(metadata={"help": "samples.jsonl from `cringe sample` (it carries the prompt texts)"})
    output: str = field(metadata={"help": "scores.jsonl to write"})
    device: str = device_field("where a reward model runs (auto: cuda when available)")


def parsers() -> dict:
    return {
        "": make_parser(
            ScoreArguments,
            prog="cringe score",
            description=__doc__,
            epilog="sections: reward ({type: callable|model|judge, ...}, as in an iterate config)",
        )
    }


def run_score(args: ScoreArguments, reward_spec: dict) -> list[float]:
    # Imported here: they import torch, which `cringe score --help` does without.
    from cringe.loop.executor import Loaded, ScoreJob

    return ScoreJob(samples=args.samples, output=args.output, reward=reward_spec, device=args.device).run(Loaded())


def main(argv: list[str]) -> None:
    reward_file, argv = pop_flag(argv, "--reward", "a file path")
    base = {"reward": read_yaml(reward_file)} if reward_file else None
    (args,), sections = parse_with_sections(parsers()[""], argv, 1, {"reward": None}, base_values=base)
    if "reward" not in sections:
        raise UserError("a reward source is required: --reward FILE, or a reward: section in --config")
    t0 = time.time()
    scores = run_score(args, sections["reward"])
    print(f"{len(scores)} scores (mean {sum(scores) / len(scores):.4f}) in {time.time() - t0:.1f} s -> {args.output}")
