"""Online baselines trained by TRL inside a loop run directory: GRPO (`GRPOTrainer`) and RLOO (`RLOOTrainer`).

Both sample N completions per prompt on-policy inside TRL's own loop and turn the group's rewards into advantages:
GRPO (Shao et al. 2024) normalises each reward by its group, RLOO (Ahmadian et al. 2024) subtracts the mean of the
other N-1. They are what practitioners reach for with a reward a program can check, so the comparisons run them
through TRL's implementations rather than ours. This module only wires them to the loop's files:
- the reward is the run's reward source, called TRL's way (`cringe.rewards.trl_reward_function`), so it sees the
  prompt rows' columns (IFEval's instructions, a dataset's answer) and scores exactly as the loop's methods are;
- training saves checkpoints under round-1/checkpoints and resumes from the last one when rerun;
- the result is published as round-1/model, so the loop's evaluation and the reports read it like any round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from datasets import Dataset

from cringe.durable.files import read_jsonl
from cringe.loop import rundir
from cringe.loop.run import publish_model
from cringe.models import load_model, load_tokenizer
from cringe.rewards import load_reward_source, trl_reward_function

logger = logging.getLogger(__name__)

ONLINE_METHODS = ("grpo", "rloo")


@dataclass(frozen=True)
class OnlineSettings:
    """What the caller sets on TRL's config; everything else stays at TRL's default. `overrides` holds further
    fields of GRPOConfig/RLOOConfig by name, for settings a comparison changes on purpose (and lists)."""

    num_generations: int
    max_completion_length: int
    epochs: float = 1.0  # the comparisons give every method the same number of sampled completions
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 10
    seed: int = 0
    overrides: dict = field(default_factory=dict)


def run_online(run, method: str, settings: OnlineSettings) -> None:
    """Train M_1 from M_0 with TRL's `method` ("grpo" or "rloo") on every training prompt of `run` (a
    cringe.loop.run.IterativeRun; its config's reward is the reward), then evaluate it like a loop round when the
    run has held-out prompts.
    Resumable: a finished step is skipped, and an interrupted training resumes from its last checkpoint."""
    if method not in ONLINE_METHODS:
        raise ValueError(f"unknown online method {method!r}; known: {', '.join(ONLINE_METHODS)}")
    with run.session():
        run.step(1, rundir.MODEL, lambda: _train(run, method, settings))
        if run.config.eval_prompts:
            run.step(1, rundir.EVAL, lambda: run.evaluate(1))


def trl_config(method: str, settings: OnlineSettings, output_dir: str, *, use_cpu: bool):
    """TRL's config for `method`: its defaults, but for the fields `OnlineSettings` names and `overrides`."""
    from trl import GRPOConfig, RLOOConfig

    config_type = {"grpo": GRPOConfig, "rloo": RLOOConfig}[method]
    fields = dict(
        output_dir=output_dir,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        num_train_epochs=settings.epochs,
        bf16=settings.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_only_model=False,  # optimiser and scheduler too: a resumed run continues, not restarts
        report_to="none",
        seed=settings.seed,
        **settings.overrides,
    )
    if use_cpu:  # set only where the run is on the CPU: on a GPU machine TRL then trains where the model is
        fields["use_cpu"] = True
    return config_type(**fields)


def _last_checkpoint(directory) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(directory)) if directory.is_dir() else None


def _train(run, method: str, settings: OnlineSettings) -> None:
    from trl import GRPOTrainer, RLOOTrainer

    c = run.config
    reward = trl_reward_function(load_reward_source(c.reward, device=c.device), name=c.reward.get("type", "reward"))
    tokenizer = load_tokenizer(c.model)
    model = load_model(c.model, tokenizer, "float32")
    checkpoints = run.run_dir.checkpoints(1)
    args = trl_config(method, settings, str(checkpoints), use_cpu=c.resolved_device() == "cpu")
    trainer_type = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}[method]
    trainer = trainer_type(
        model=model,
        reward_funcs=[reward],
        args=args,
        processing_class=tokenizer,
        # every column of the prompt rows: TRL passes them to the reward function by name
        train_dataset=Dataset.from_list(read_jsonl(c.prompts)),
    )
    resume = _last_checkpoint(checkpoints)
    if resume:
        logger.info("%s: resuming from %s", method, resume)
    trainer.train(resume_from_checkpoint=resume)
    publish_model(trainer, run.run_dir.round(1), base_model=c.model, data=f"prompts of `{c.prompts}` ({method}, TRL)")
