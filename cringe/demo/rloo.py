"""A PPO-family baseline for the comparison: TRL's RLOOTrainer on the same reward, inside a loop run directory.

RLOO (REINFORCE leave-one-out; Ahmadian et al. 2024) samples N completions per prompt on-policy, uses the other
N-1 samples' mean reward as each one's baseline and keeps a KL penalty to the start: the paper's PPO row, at a
cost a CPU can pay. We use TRL's implementation rather than write one; this module only wires it to the loop's
files (the round's model/ is published the same way, so the loop's evaluation and the demo's report read it
like any other method's).
"""

from __future__ import annotations

import logging

from datasets import Dataset

from cringe.durable.files import read_jsonl
from cringe.loop import rundir
from cringe.loop.run import publish_model
from cringe.models import load_model, load_tokenizer
from cringe.rewards import load_reward_source

logger = logging.getLogger(__name__)


def run_rloo(
    run,
    *,
    samples_per_prompt: int,
    learning_rate: float,
    epochs: float,
    batch_size: int,
    max_new_tokens: int,
    beta: float,
    bf16: bool,
    seed: int,
) -> None:
    """Train M_1 from M_0 with RLOO on every training prompt of `run` (a cringe.loop.run.IterativeRun; its config's
    reward is the reward), then evaluate it like a loop round. Resumable: finished steps are skipped."""
    with run.session():
        run.step(
            1,
            rundir.MODEL,
            lambda: _train(
                run,
                samples_per_prompt=samples_per_prompt,
                learning_rate=learning_rate,
                epochs=epochs,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                beta=beta,
                bf16=bf16,
                seed=seed,
            ),
        )
        run.step(1, rundir.EVAL, lambda: run.evaluate(1))


def _train(
    run,
    *,
    samples_per_prompt: int,
    learning_rate: float,
    epochs: float,
    batch_size: int,
    max_new_tokens: int,
    beta: float,
    bf16: bool,
    seed: int,
) -> None:
    from trl import RLOOConfig, RLOOTrainer

    c = run.config
    reward = load_reward_source(c.reward, device=c.device)

    def reward_fn(prompts, completions, **_):
        texts = [x[-1]["content"] if isinstance(x, list) else x for x in completions]
        return reward.score([""] * len(texts), texts)

    tokenizer = load_tokenizer(c.model)
    model = load_model(c.model, tokenizer, "float32")
    n = samples_per_prompt
    args = RLOOConfig(
        output_dir=str(run.run_dir.checkpoints(1)),
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size // n * n or n,
        num_generations=n,
        max_completion_length=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=beta,
        bf16=bf16,
        use_cpu=c.resolved_device() == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=5,
        seed=seed,
        disable_dropout=True,
    )
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(read_jsonl(c.prompts)),
    )
    trainer.train()
    publish_model(trainer, run.run_dir.round(1), base_model=c.model, data=f"prompts of `{c.prompts}` (RLOO, TRL)")
