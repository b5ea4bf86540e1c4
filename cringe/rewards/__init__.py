"""Reward sources behind one interface, `score(prompts, completions) -> list[float]`:

* sources.py: `RewardModel` (a sequence-classification model, scored on the conversation rendered with its own
  chat template), `CallableReward` (a Python function, called TRL's way when it takes **kwargs),
  `InstructionsReward` (IFEval's checks on each prompt row's instructions), and `check_reward_spec` /
  `load_reward_source`, which turn a config's reward mapping into one of them (`SOURCE_TYPES`), and
  `check_prompts`, what a source needs of the prompts, checked before sampling;
* judge.py: `PairwiseJudge`, an LLM judge over the OpenAI-compatible chat API that asks each pair in both orders;
* training.py: `train_reward_model`, a one-logit reward model from labelled or pairwise rows.
"""

from cringe.rewards.judge import (
    JUDGE_TEMPLATE,
    POSITION_BIAS_MIN_ANSWERS,
    VERDICTS,
    JudgePositionBiasError,
    JudgeStats,
    JudgeUnavailableError,
    JudgeUnreadableError,
    PairwiseJudge,
    read_logprob_verdict,
    read_text_verdict,
)
from cringe.rewards.sources import (
    REWARD_INPUTS,
    SOURCE_TYPES,
    CallableReward,
    InstructionsReward,
    RewardModel,
    SourceType,
    check_prompts,
    check_reward_spec,
    checks_prompts,
    load_reward_source,
    trl_reward_function,
)
from cringe.rewards.training import train_reward_model

__all__ = [
    "JUDGE_TEMPLATE",
    "POSITION_BIAS_MIN_ANSWERS",
    "REWARD_INPUTS",
    "SOURCE_TYPES",
    "VERDICTS",
    "CallableReward",
    "InstructionsReward",
    "JudgePositionBiasError",
    "JudgeStats",
    "JudgeUnavailableError",
    "JudgeUnreadableError",
    "PairwiseJudge",
    "RewardModel",
    "SourceType",
    "check_prompts",
    "check_reward_spec",
    "checks_prompts",
    "load_reward_source",
    "read_logprob_verdict",
    "read_text_verdict",
    "train_reward_model",
    "trl_reward_function",
]
