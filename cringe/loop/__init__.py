"""The iterative loop: `cringe iterate`'s rounds of sample -> score -> pair -> train -> evaluate.

run.py        IterateConfig and IterativeRun: the algorithm, on one screen (IterativeRun.run)
stages.py     the units of work: sampling to a file by shards, scoring, log-probs
processes.py  running a stage in a process of its own (`cringe sample`, `accelerate launch ... train`)
pairing.py    scored samples -> training rows (best vs worst, threshold, best only)
rundir.py     the run directory's layout and state.json
tracking.py   TensorBoard / wandb
"""

from cringe.loop.run import IterateConfig, IterativeRun, evaluation_table, load_config, publish_model

__all__ = ["IterateConfig", "IterativeRun", "evaluation_table", "load_config", "publish_model"]
