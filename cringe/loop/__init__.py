"""The iterative loop: `cringe iterate`'s rounds of sample -> score -> pair -> train -> evaluate.

run.py        IterativeRun: the algorithm, on one screen (IterativeRun.run), and its steps
config.py     IterateConfig: every key, what of it decides results
executor.py   where each step runs (this process, a stage process, `accelerate launch`) and its typed inputs
              (SampleJob, ScoreJob, TrainJob); child.py runs a job in a process of its own
stages.py     the units of work: sampling to a file by shards, scoring, log-probs
processes.py  the `accelerate launch` command line and a launched process's rank
evaluation.py M_k against M_0 on held-out prompts (win rate, KL)
resume.py     what a resume checks against state.json
pairing.py    scored samples -> training rows (best vs worst, threshold, best only)
rundir.py     the run directory's layout and state.json
tracking.py   TensorBoard / wandb
"""

from cringe.loop.run import IterateConfig, IterativeRun, evaluation_table, load_config, publish_model

__all__ = ["IterateConfig", "IterativeRun", "evaluation_table", "load_config", "publish_model"]
