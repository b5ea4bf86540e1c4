"""The layout of a `cringe iterate` run directory, in one place.

    <run>/state.json                 the config, its hash, the finished steps (with seconds)
    <run>/baseline_samples.jsonl     M_0's held-out samples, and their scores (baseline_scores.jsonl)
    <run>/logs/                      tracker logs (TensorBoard event files), kept across rounds
    <run>/report/                    report.md, report.html and plots, written at the end (cringe.report)
    <run>/round-<k>/samples.jsonl    N completions per prompt sampled from M_{k-1}
                    scores.jsonl     one reward per sample
                    pairs.jsonl      the training rows built from them, and pairing.json (what was kept)
                    model/           M_k (complete once it exists; written as .model.tmp and renamed)
                    eval_samples.jsonl, eval_scores.jsonl, eval.json   M_k against M_0 on held-out prompts
    <run>/.lock                      held by the process running the directory (cringe.durable.runlock)
    <run>/round-<k>/.scores-partial.jsonl   an LLM judge's answers while it scores (cringe.durable.answerlog)

The loop writes through this object and the demo, the report and the benchmarks read through it, so no
caller spells a file name.
"""

from __future__ import annotations

import time
from pathlib import Path

from cringe.durable.files import DamagedFileError, read_json, read_jsonl, write_json
from cringe.generation import Sample

SAMPLES = "samples.jsonl"
SCORES = "scores.jsonl"
PAIRS = "pairs.jsonl"
PAIRING = "pairing.json"
MODEL = "model"
EVAL = "eval.json"
EVAL_SAMPLES = "eval_samples.jsonl"
EVAL_SCORES = "eval_scores.jsonl"
CHECKPOINTS = "checkpoints"
MODEL_TMP = ".model.tmp"  # M_k while it is saved; renamed to model/ once complete
TRAIN_ROWS = ".train_rows.jsonl"  # a round's training rows while it trains (a launched training reads them)
BASELINE_SAMPLES = "baseline_samples.jsonl"
BASELINE_SCORES = "baseline_scores.jsonl"
# The demo's second opinion on held-out samples: the proxy reward beside the gold judge's scores.
EVAL_PROXY_SCORES = "eval_proxy_scores.jsonl"
BASELINE_PROXY_SCORES = "baseline_proxy_scores.jsonl"
# scores file -> the samples file it scores
SCORED_SAMPLES = {
    SCORES: SAMPLES,
    EVAL_SCORES: EVAL_SAMPLES,
    BASELINE_SCORES: BASELINE_SAMPLES,
    EVAL_PROXY_SCORES: EVAL_SAMPLES,
    BASELINE_PROXY_SCORES: BASELINE_SAMPLES,
}


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ----- paths ------------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def baseline_samples(self) -> Path:
        return self.path / BASELINE_SAMPLES

    @property
    def baseline_scores(self) -> Path:
        return self.path / BASELINE_SCORES

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def round(self, k: int) -> Path:
        return self.path / f"round-{k}"

    def file(self, k: int, name: str) -> Path:
        """round-k/<name>, for one of this module's file names."""
        return self.round(k) / name

    def model(self, k: int) -> Path:
        return self.round(k) / MODEL

    def checkpoints(self, k: int) -> Path:
        return self.round(k) / CHECKPOINTS

    # ----- contents ---------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.state_path.exists()

    def state(self) -> dict:
        """state.json, checked: a hand-edited file that lost what resume needs is named, not a KeyError later."""
        state = read_json(self.state_path)
        problem = None
        if not isinstance(state, dict):
            problem = "not a JSON object"
        elif not isinstance(state.get("config"), dict):
            problem = "no 'config' mapping"
        elif not isinstance(state.get("hash"), str):
            problem = "no 'hash' string"
        elif not isinstance(state.get("steps", []), list):
            problem = "'steps' is not a list"
        if problem:
            raise DamagedFileError(f"{self.state_path}: {problem}; restore it, or start again in another output_dir")
        return state

    def config(self) -> dict:
        """The config the run was created with (IterateConfig fields)."""
        return self.state()["config"]

    def planned_rounds(self) -> int:
        return self.config()["rounds"]

    def steps(self) -> list[dict]:
        """Finished steps in order: {round, step, seconds, finished}."""
        return self.state().get("steps", [])

    def seconds(self, step: str, up_to_round: int) -> float:
        """Time spent on `step` (e.g. 'model' = training) in rounds 1..up_to_round (untimed steps count 0)."""
        return sum(s["seconds"] or 0.0 for s in self.steps() if s["step"] == step and s["round"] <= up_to_round)

    def evaluation(self, k: int) -> dict | None:
        path = self.file(k, EVAL)
        return read_json(path) if path.exists() else None

    def evaluated_rounds(self) -> list[int]:
        return [k for k in range(1, self.planned_rounds() + 1) if self.file(k, EVAL).exists()]

    @staticmethod
    def samples(path: Path):
        """The samples in a samples file (cringe.generation.Sample)."""

        return [Sample.from_dict(d) for d in read_jsonl(path)]

    @staticmethod
    def scores(path: Path, samples: Path | None = None) -> list[float | None]:
        """The scores in `path` (None: the reward source gave that sample none), checked row by row against the
        samples file they score (`samples`; default: the samples file this layout pairs with a scores file of that
        name), so a damaged file is never paired with the wrong samples. A scores file of another name must say
        which samples it scores."""
        rows = RunDir.score_rows(path, samples)
        try:
            return [None if r["score"] is None else float(r["score"]) for r in rows]
        except (KeyError, TypeError, ValueError):
            raise DamagedFileError(f"{path}: a row without a numeric 'score'") from None

    @staticmethod
    def labels(path: Path, samples: Path | None = None) -> list[bool | None] | None:
        """The binary labels a reward source stored beside its scores (the instruction checks' "all followed"),
        None when it stored none: binary pairing then labels by a threshold on the scores."""
        rows = RunDir.score_rows(path, samples)
        if not any("label" in r for r in rows):
            return None
        return [r.get("label") for r in rows]

    @staticmethod
    def score_rows(path: Path, samples: Path | None = None) -> list[dict]:
        """The rows of a scores file, checked against its samples file (see `scores`)."""
        path = Path(path)
        if samples is None:
            if path.name not in SCORED_SAMPLES:
                raise ValueError(f"{path}: which samples file does it score? (pass samples=)")
            samples = path.with_name(SCORED_SAMPLES[path.name])
        rows = read_jsonl(path)
        if Path(samples).exists():
            expected = [(r["prompt_id"], r["sample_id"]) for r in read_jsonl(samples)]
            got = [(r.get("prompt_id"), r.get("sample_id")) if isinstance(r, dict) else None for r in rows]
            if got != expected:
                raise DamagedFileError(
                    f"{path}: {len(rows)} scores do not match the {len(expected)} samples of "
                    f"{Path(samples).name}; delete it to score again"
                )
        return rows

    # ----- bookkeeping -----------------------------------------------------------------------------------------
    def create(self, state: dict) -> dict:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.state_path, state)
        return state

    def update_state(self, **fields) -> None:
        write_json(self.state_path, {**self.state(), **fields})

    def record_step(self, k: int, step: str, seconds: float | None) -> None:
        """A finished step in state.json (seconds None: it finished before this process, untimed)."""
        finished = time.strftime("%Y-%m-%d %H:%M:%S") if seconds is not None else "before this run (not timed)"
        state = self.state()
        state.setdefault("steps", []).append(
            {"round": k, "step": step, "seconds": None if seconds is None else round(seconds, 1), "finished": finished}
        )
        write_json(self.state_path, state)

    def is_recorded(self, k: int, step: str) -> bool:
        return any(s["round"] == k and s["step"] == step for s in self.steps())

    def pairing(self, k: int) -> dict | None:
        """Round k's pairing report (pairing.json), None before the round is paired."""
        path = self.file(k, PAIRING)
        return read_json(path) if path.exists() else None

    def train_log(self, k: int) -> list[dict]:
        """M_k's training log ([] before it is trained)."""
        path = self.model(k) / "train_log.json"
        return read_json(path) if path.exists() else []

    def labelled_samples(self, up_to_round: int) -> int:
        """How many samples rounds 1..up_to_round had labelled by the reward source."""
        return sum(len(read_jsonl(self.file(j, SAMPLES))) for j in range(1, up_to_round + 1))

    def rows_kept(self, up_to_round: int) -> int:
        """Training rows that rounds 1..up_to_round kept after pairing."""
        return sum(read_json(self.file(j, PAIRING))["kept"] for j in range(1, up_to_round + 1))
