"""Turn scored samples into training data: best-vs-worst pairs per prompt, or threshold-labelled binary rows.

Rows come out already tokenised (the sampled token ids themselves), ready for `CringeTrainer` as
`PreparedData`: on-policy tokens are trained exactly as they were generated.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from cringe.data import PreparedData, ValidationReport
from cringe.generation import Sample

logger = logging.getLogger(__name__)


@dataclass
class PairingReport:
    prompts: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1):
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def as_dict(self) -> dict:
        return asdict(self)


def _group(
    samples: Sequence[Sample], scores: Sequence[float | None], drop_truncated: bool, report: PairingReport
) -> dict[int, list[tuple[Sample, float]]]:
    """Each prompt's pairable (sample, score)s. A sample without a reward (score None: a reward function's "no
    reward") is left out and counted; a prompt none of whose samples has one is dropped and counted."""
    if len(samples) != len(scores):
        raise ValueError(f"{len(samples)} samples but {len(scores)} scores")
    groups: dict[int, list[tuple[Sample, float]]] = defaultdict(list)
    rewarded = {s.prompt_id for s, r in zip(samples, scores) if r is not None}
    report.drop("no reward for any sample", len({s.prompt_id for s in samples} - rewarded))
    for s, r in zip(samples, scores):
        if r is None:
            report.drop("sample without a reward")
            continue
        if drop_truncated and s.finish_reason == "length":
            report.drop("truncated sample")
            continue
        if not s.completion_ids:
            report.drop("empty sample")
            continue
        groups[s.prompt_id].append((s, float(r)))
    report.prompts = len({s.prompt_id for s in samples})
    return groups


def _extremes(groups: dict, min_gap: float, report: PairingReport):
    """(prompt id, best (sample, score), worst (sample, score)) of each prompt whose best beats its worst by more
    than 0 and at least `min_gap`; the others are counted in `report`. Stable: on equal scores the earlier sample
    wins, so reruns pick the same samples."""
    for prompt_id, group in sorted(groups.items()):
        if len(group) < 2:
            report.drop("fewer than 2 samples")
            continue
        ranked = sorted(group, key=lambda sr: -sr[1])
        gap = ranked[0][1] - ranked[-1][1]
        if gap <= 0 or gap < min_gap:
            report.drop("reward gap below min_gap")
            continue
        yield prompt_id, ranked[0], ranked[-1]


def best_vs_worst(
    samples: Sequence[Sample], scores: Sequence[float], *, min_gap: float = 0.0, drop_truncated: bool = False
) -> tuple[list[dict], PairingReport]:
    """One pair per prompt: its highest-scored sample against its lowest. A prompt is dropped when the gap is
    not above `min_gap` (a tie carries no signal), when fewer than two samples remain, or when best and worst
    are the same tokens."""
    report = PairingReport()
    rows = []
    for prompt_id, (best, r_best), (worst, r_worst) in _extremes(
        _group(samples, scores, drop_truncated, report), min_gap, report
    ):
        if best.completion_ids == worst.completion_ids:
            report.drop("identical best and worst")
            continue
        rows.append(
            {
                "row": prompt_id,
                "prompt_ids": best.prompt_ids,
                "completion_ids": [best.completion_ids, worst.completion_ids],
                "label": None,
                "chosen_score": r_best,
                "rejected_score": r_worst,
                "chosen": best.completion,
                "rejected": worst.completion,
            }
        )
    report.kept = len(rows)
    return rows, report


def best_only(
    samples: Sequence[Sample], scores: Sequence[float], *, min_gap: float = 0.0, drop_truncated: bool = False
) -> tuple[list[dict], PairingReport]:
    """Rejection sampling (best-of-n fine-tuning, as in RAFT / ReST): each prompt's highest-scored sample as an SFT
    row, for the prompts whose reward spread selects one (the rule best_vs_worst applies)."""
    report = PairingReport()
    rows = [
        {
            "row": prompt_id,
            "prompt_ids": best.prompt_ids,
            "completion_ids": [best.completion_ids],
            "label": True,
            "score": r_best,
            "completion": best.completion,
        }
        for prompt_id, (best, r_best), _ in _extremes(_group(samples, scores, drop_truncated, report), min_gap, report)
    ]
    report.kept = len(rows)
    return rows, report


def by_threshold(
    samples: Sequence[Sample],
    scores: Sequence[float | None],
    *,
    threshold: float,
    drop_truncated: bool = False,
    labels: Sequence[bool | None] | None = None,
) -> tuple[list[dict], PairingReport]:
    """Binary feedback: every sample labelled good (score >= threshold) or bad, for binary Cringe; or, where the
    reward source stored a label per sample (`labels`: the instruction checks' "all followed, strict"), by that."""
    report = PairingReport()
    if labels is not None:
        if len(labels) != len(samples):
            raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
        # a sample without a label has no reward to pair by
        label_of = {(s.prompt_id, s.sample_id): label for s, label in zip(samples, labels)}
        scores = [None if label is None else r for r, label in zip(scores, labels)]
    rows = []
    for prompt_id, group in sorted(_group(samples, scores, drop_truncated, report).items()):
        for s, r in group:
            rows.append(
                {
                    "row": prompt_id,
                    "prompt_ids": s.prompt_ids,
                    "completion_ids": [s.completion_ids],
                    "label": bool(label_of[s.prompt_id, s.sample_id]) if labels is not None else r >= threshold,
                    "score": r,
                    "completion": s.completion,
                }
            )
    report.kept = len(rows)
    return rows, report


def training_rows(
    samples: Sequence[Sample],
    scores: Sequence[float | None],
    data_kind: str,
    *,
    min_gap: float = 0.0,
    binary_threshold: float | None = None,
    drop_truncated: bool = False,
    name: str = "this round",
    labels: Sequence[bool | None] | None = None,
) -> tuple[list[dict], PairingReport]:
    """A round's rows of the kind its loss trains on (data_kind: pairwise, binary or sft). Binary rows take the
    labels the reward source stored (`labels`), or else are labelled against binary_threshold, by default just
    above the round's mean reward (a median would call every sample good when more than half share the lowest
    score). A round labelled all one way is logged as a warning: equal scores, for one, label every sample bad.
    Samples without a reward (None) are left out (`_group`); a round where half or more have none warns."""
    _log_missing_rewards(scores, name)
    if data_kind == "sft":
        return best_only(samples, scores, min_gap=min_gap, drop_truncated=drop_truncated)
    if data_kind != "binary":
        return best_vs_worst(samples, scores, min_gap=min_gap, drop_truncated=drop_truncated)
    threshold = binary_threshold
    rewarded = [r for r in scores if r is not None]
    if threshold is None and rewarded:
        threshold = math.nextafter(sum(rewarded) / len(rewarded), math.inf)
    rows, report = by_threshold(samples, scores, threshold=threshold, drop_truncated=drop_truncated, labels=labels)
    kept_labels = {row["label"] for row in rows}
    if len(kept_labels) == 1:
        logger.warning(
            "%s: all %d samples labelled %s (%s)",
            name,
            len(rows),
            "good" if kept_labels.pop() else "bad",
            "by the reward source's labels" if labels is not None else f"threshold {threshold:g}",
        )
    return rows, report


def _log_missing_rewards(scores: Sequence[float | None], name: str) -> None:
    missing = sum(r is None for r in scores)
    if not missing:
        return
    level = logging.WARNING if 2 * missing >= len(scores) else logging.INFO
    logger.log(level, "%s: %d of %d samples got no reward (None); pairing leaves them out", name, missing, len(scores))


def as_training_data(rows: list[dict], kind: str) -> PreparedData:
    """kind: a loss's data kind ('pairwise', 'binary' or 'sft'; SFT rows are single good completions, which the
    trainer batches as binary rows)."""
    if not rows:
        raise ValueError("no training rows: every prompt was dropped (see the pairing report)")
    return PreparedData(
        "pairwise" if kind == "pairwise" else "binary", rows, ValidationReport("generated", False, kept=len(rows))
    )
