"""The loop's evaluation: M_k against M_0 on held-out prompts, both sampled and scored (each file kept, so a rerun
continues), KL(M_k || M_0) from M_k's samples' log-probs. The one evaluation `cringe iterate`, `cringe evaluate` and
the demo run (cringe.loop.run.IterativeRun takes these steps from HeldOutEvaluation)."""

from __future__ import annotations

import shutil

from cringe.durable.files import write_json
from cringe.errors import UserError
from cringe.evaluate import compare, comparison_table
from cringe.instructions import accuracy_tables, evaluation_results, evaluation_summary
from cringe.loop import rundir
from cringe.loop.rundir import RunDir
from cringe.loop.stages import completion_logprobs
from cringe.models import add_evaluation_to_card, free_memory


class HeldOutEvaluation:
    """The evaluation steps of a run directory. The class that takes them provides `config`, `run_dir`,
    `tokenizer`, `prompts(evaluation)`, `sample(...)`, `score(...)` and `load_model(k, device=...)`."""

    def baseline(self):
        """M_0's held-out samples and scores: computed once (or taken from `baseline_from`), the reference every
        round is compared with."""
        prompts = self.prompts(evaluation=True)
        paths = (self.run_dir.baseline_samples, self.run_dir.baseline_scores)
        if self.config.baseline_from and not all(p.exists() for p in paths):
            source = RunDir(self.config.baseline_from)
            for origin, target in zip((source.baseline_samples, source.baseline_scores), paths):
                if not origin.exists():
                    raise UserError(f"baseline_from: {origin}: no such file (sample that run's baseline first)")
                shutil.copyfile(origin, target)
        samples = self._load_or_sample(0, prompts, paths[0])
        return prompts, samples, self._load_or_score(prompts, samples, paths[1])

    def _load_or_sample(self, model_index, prompts, path):
        if path.exists():
            return self.run_dir.samples(path)
        return self.sample(model_index, prompts, path, n=self.config.eval_samples, stream="eval", evaluation=True)

    def _load_or_score(self, prompts, samples, path) -> list[float]:
        """Held-out scores: read back when the file is there, else scored with the evaluation reward."""
        if path.exists():
            return self.run_dir.scores(path)
        return self.score(prompts, samples, path, evaluation=True)

    def _logprobs(self, k: int, samples) -> list[float]:
        """log M_k(sample) on the run's device, the model dropped afterwards (the next stage needs the memory)."""

        model = self.load_model(k, device=self.config.device)
        logps = completion_logprobs(model, samples, self.tokenizer.pad_token_id)
        del model
        free_memory()
        return logps

    def compare(self, k: int) -> dict:
        """M_k against M_0 on the held-out prompts: cringe.evaluate.compare's schema plus the round, and, where the
        evaluation reward keeps per-instruction results (the instructions reward), `instructions`: {policy,
        baseline}, each IFEval's four accuracies with 95% intervals, keyed by prompt, and the accuracy per
        instruction type (cringe.instructions.evaluation_summary)."""
        round_dir = self.run_dir.round(k)
        round_dir.mkdir(parents=True, exist_ok=True)
        prompts, base_samples, base_scores = self.baseline()
        samples = self._load_or_sample(k, prompts, round_dir / rundir.EVAL_SAMPLES)
        scores = self._load_or_score(prompts, samples, round_dir / rundir.EVAL_SCORES)
        result = {
            "round": k,
            **compare(
                samples,
                scores,
                base_samples,
                base_scores,
                policy_logps=self._logprobs(k, samples),
                reference_logps=self._logprobs(0, samples),
                seed=self.config.seed,
            ),
        }
        policy = self._instruction_results(samples, round_dir / rundir.EVAL_SCORES, round_dir / rundir.EVAL_SAMPLES)
        baseline = self._instruction_results(base_samples, self.run_dir.baseline_scores, self.run_dir.baseline_samples)
        if policy is not None and baseline is not None:
            seed = self.config.seed
            result["instructions"] = {
                "policy": evaluation_summary(policy, seed=seed),
                "baseline": evaluation_summary(baseline, seed=seed),
            }
        return result

    def _instruction_results(self, samples, scores_path, samples_path) -> list[dict] | None:
        """Per-instruction results of held-out samples, keyed by prompt, where the evaluation reward kept them
        (the instructions reward): IFEval's accuracies are computed from these, not from the scores."""
        return evaluation_results(samples, self.run_dir.score_rows(scores_path, samples_path))

    def evaluate(self, k: int) -> dict:
        """Round k's evaluation step: `compare`, added to M_k's model card, and eval.json (the step's marker)."""
        result = self.compare(k)
        add_evaluation_to_card(
            self.run_dir.model(k),
            evaluation_table([result])
            + f"\n\nHeld-out prompts: {result['n_prompts']} from `{self.config.eval_prompts}`.",
        )
        write_json(self.run_dir.file(k, rundir.EVAL), result)
        return result


def evaluation_table(evaluations: list[dict]) -> str:
    """The comparison table, and IFEval's accuracy tables where the evaluations have them."""
    ifeval = accuracy_tables([{**e, "name": f"round {e['round']}"} for e in evaluations], "name", "M0")
    return comparison_table(evaluations, "round", "round", baseline="M0") + (f"\n\n{ifeval}" if ifeval else "")
