"""Writes the state.json fixtures of tests/test_settings.py: run directories as the code of commit 5aef4c9 (state
version 2, before the typed loss settings) wrote them. Kept to show how they were made; rerunning it with newer code
would no longer write what that version wrote.

    cd tests/data/state_v2 && ../../../.venv/bin/python generate.py .

Every machine-dependent default is pinned (device, backend, sampling_dtype, bf16), so the `resolved` section holds
on any machine; paths are relative to the run's working directory.
"""

import os
import shutil
import sys
from pathlib import Path

import yaml

from cringe.loop.run import IterativeRun, load_config

BASE = {
    "model": "tiny-random-llama",
    "prompts": "prompts.jsonl",
    "output_dir": "run",
    "rounds": 2,
    "reward": {"type": "callable", "function": "cringe.testbeds.toy:vowel_share"},
    "sampling": {"n": 4, "max_new_tokens": 12},
    "device": "cpu",
    "backend": "transformers",
    "sampling_dtype": "float32",
}
CASES = {
    "pairwise_cringe_defaults": {
        "loss": "pairwise_cringe",
        "train": {"learning_rate": 1e-4, "bf16": False, "num_train_epochs": 2},
    },
    "pairwise_cringe_set": {
        "loss": "pairwise_cringe",
        "train": {
            "learning_rate": 1e-4,
            "bf16": False,
            "alpha": 0.5,
            "k": 2,
            "margin": 2.0,
            "temperature": 0.5,
            "margin_on": "mean",
            "detach_gate": False,
        },
    },
    "binary_cringe_defaults": {"loss": "binary_cringe", "train": {"bf16": False}},
    "dpo_beta": {"loss": "dpo", "train": {"bf16": False, "beta": 0.2, "precompute_ref_logps": True}},
}

if __name__ == "__main__":
    out = Path(sys.argv[1]).absolute()
    for name, extra in CASES.items():
        work = Path("work") / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "config.yaml").write_text(yaml.safe_dump({**BASE, **extra}, sort_keys=False))
        cwd = os.getcwd()
        os.chdir(work)
        IterativeRun(load_config("config.yaml", [])).check_state()
        os.chdir(cwd)
        (out / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "config.yaml", out / name / "config.yaml")
        shutil.copy(work / "run" / "state.json", out / name / "state.json")
