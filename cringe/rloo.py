"""A PPO-family baseline for the comparison: TRL's RLOOTrainer on the same reward, inside a loop run directory.

RLOO (REINFORCE leave-one-out; Ahmadian et al. 2024) samples N completions per prompt on-policy, uses the other
N-1 samples' mean reward as each one's baseline and keeps a KL penalty to the start: the paper's PPO row, at a
cost a CPU can pay. We use TRL's implementation rather than write one; this module only wires it to the loop's
files (the round's model/ is published the same way, so the loop's evaluation and the demo's report read it
like any other method's).
"""

from __future__ import annotations

import logging
import time

from . import rundir
from .files import read_jsonl

logger = logging.getLogger(__name__)


def run_rloo(run, *, samples_per_prompt: int, learning_rate: float, epochs: float, batch_size: int,
             max_new_tokens: int, beta: float, bf16: bool, seed: int, before_training=None) -> None:
    """Train M_1 from M_0 with RLOO on every training prompt of `run` (a cringe.loop.IterativeRun; its config's
    reward is the reward), then evaluate it like a loop round. Resumable: finished steps are skipped.
    before_training(run), if given, is called once the run directory exists (the demo copies M0's held-out
    samples in)."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from .loop import publish_model
    from .models import load_model, load_tokenizer
    from .rewards import load_reward_source

    c = run.config
    run.check_state()
    if before_training is not None:
        before_training(run)
    round_dir = run.run_dir.round(1)
    round_dir.mkdir(parents=True, exist_ok=True)
    if not run.run_dir.model(1).exists():
        t0 = time.time()
        reward = load_reward_source(c.reward, device=c.device)

        def reward_fn(prompts, completions, **_):
            texts = [x[-1]["content"] if isinstance(x, list) else x for x in completions]
            return reward.score([""] * len(texts), texts)

        tokenizer = load_tokenizer(c.model)
        model = load_model(c.model, tokenizer, "float32")
        n = samples_per_prompt
        args = RLOOConfig(
            output_dir=str(run.run_dir.checkpoints(1)), learning_rate=learning_rate, lr_scheduler_type="constant",
            num_train_epochs=epochs, per_device_train_batch_size=batch_size // n * n or n,
            num_generations=n, max_completion_length=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
            beta=beta, bf16=bf16, use_cpu=True, report_to="none", save_strategy="no", logging_steps=5,
            seed=seed, disable_dropout=True)
        trainer = RLOOTrainer(model=model, reward_funcs=[reward_fn], args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list(read_jsonl(c.prompts)))
        trainer.train()
        publish_model(trainer, round_dir, base_model=c.model, data=f"prompts of `{c.prompts}` (RLOO, TRL)")
        run.finish_step(1, rundir.MODEL, time.time() - t0)
    if not run.run_dir.file(1, rundir.EVAL).exists():
        t0 = time.time()
        run.evaluate(1, round_dir)
        run.finish_step(1, rundir.EVAL, time.time() - t0)
