"""The instrument of bench/gpu/gpu_iterate.py and bench/gpu/gpu_recipe.py for steps that run in processes of their
own: ProbedStage is the loop's StageProcess executor with this file as the child, which runs the job as
`python -m cringe.loop.child` does and appends the process's peak GPU memory and device to LOG (one JSON line:
stage "KIND:OUTPUT_NAME", round_dir, peak_gib, device).

    run = IterativeRun(config, stage_process=functools.partial(ProbedStage, log=LOG))
    python bench/gpu/gpu_stage_probe.py LOG JOB.json        (what each stage process runs)
"""

import json
import sys
from pathlib import Path

from cringe.loop.executor import StageProcess


class ProbedStage(StageProcess):
    """A stage process that records its GPU memory peak in `log`."""

    def __init__(self, python: str | None = None, *, log: Path):
        super().__init__(python)
        self.log = Path(log)

    def command(self, job) -> list[str]:
        return [self.python or sys.executable, str(Path(__file__).resolve()), str(self.log)]


def main(log: str, job_file: str) -> None:
    import torch

    from cringe.loop import child
    from cringe.loop.executor import read_job

    job = read_job(job_file)
    output = Path(job.output)
    try:
        child.main([job_file])
    finally:
        on_gpu = torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0
        record = {
            "stage": f"{job.kind}:{output.name}",
            "round_dir": output.parent.name,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        }
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
