"""Experiment trackers for `cringe iterate`: TensorBoard and Weights & Biases, owned by the loop.

Why not the Trainer's own `report_to`: each round is a new Trainer whose step counter starts at 0 and whose
logging directory sits under the round's checkpoints, which are deleted when the round's model is published. The
loop instead logs (a) every training log line with one global step that continues across rounds and (b) each
round's evaluation with the round as its step, to writers that live in `<output_dir>/logs/` for the whole run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from cringe.errors import UserError

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb")


def check_trackers(report_to: list[str]) -> list[str]:
    """The tracker names, checked (and their packages importable) when the config is read."""
    names = [n for n in report_to if n != "none"]
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown:
        raise UserError(f"report_to: unknown trackers {unknown}; choose from {', '.join(TRACKERS)} (or none)")

    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for name in names:
        if importlib.util.find_spec(packages[name]) is None:
            raise UserError(f"report_to {name} needs the {packages[name]} package: pip install {packages[name]}")
    return names


class Trackers:
    """Writers for every tracker named; `log(metrics, step)` sends scalars to all of them."""

    def __init__(self, report_to: list[str], log_dir: Path, run_name: str, config: dict):
        self.names = check_trackers(report_to)
        self._tensorboard = self._wandb = None
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

            log_dir.mkdir(parents=True, exist_ok=True)
            self._tensorboard = SummaryWriter(log_dir=str(log_dir))
        if "wandb" in self.names:
            import wandb

            # One W&B run per run directory, so a resumed `cringe iterate` continues the same run.
            run_id = hashlib.sha256(str(log_dir.resolve()).encode()).hexdigest()[:16]
            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "cringe"),
                name=run_name,
                id=run_id,
                resume="allow",
                config=config,
                dir=str(log_dir),
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, global_step=step)
            self._tensorboard.flush()
        if self._wandb is not None:
            # W&B steps must increase; training and round metrics have their own step keys instead.
            axis = "round" if any(k.startswith(("eval/", "pairs/")) for k in scalars) else "train/global_step"
            self._wandb.log({**scalars, axis: step})

    def log_training(self, logs: dict, step: int) -> None:
        """One training log line (the Trainer's `logs`), under train/, at the run's global step."""
        self.log({f"train/{k}": v for k, v in logs.items()}, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def round_metrics(evaluation: dict | None, pairing: dict | None, train_log: list[dict] | None = None) -> dict:
    """A round's scalars: its evaluation (cringe.evaluate.compare's schema), what pairing kept, and the mean
    Pairwise Cringe gate over the round's training log."""
    out: dict[str, float] = {}
    gates = [h["gate"] for h in train_log or [] if "gate" in h]
    if gates:
        out["train/mean_gate"] = sum(gates) / len(gates)
    if evaluation is not None:
        w = evaluation["win_rate"]
        out.update(
            {
                "eval/win_rate": w["win_rate"],
                "eval/win_rate_ci_low": w["ci_low"],
                "eval/win_rate_ci_high": w["ci_high"],
                "eval/reward": evaluation["reward"]["mean"],
                "eval/baseline_reward": evaluation["baseline_reward"]["mean"],
            }
        )
        if evaluation.get("kl") is not None:
            out["eval/kl"] = evaluation["kl"]["mean"]
        out.update({f"eval/{k}": v for k, v in evaluation["text"].items()})
    if pairing is not None:
        out.update({f"pairs/{k}": v for k, v in pairing.items() if isinstance(v, (int, float))})
    return out
