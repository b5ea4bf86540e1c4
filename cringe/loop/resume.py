"""What a resume checks: that a run directory's rounds were computed as this config would compute them. Keys that
do not change results (IterateConfig.OPERATIONAL_KEYS: where steps run, how many rounds) may change between
resumes; pairing settings may change only for rounds not yet paired."""

from __future__ import annotations

import dataclasses
import time

from cringe.durable.files import read_json
from cringe.errors import UserError
from cringe.loop import rundir
from cringe.loop.config import STATE_VERSION, IterateConfig
from cringe.loop.rundir import RunDir


def check_state(run_dir: RunDir, c: IterateConfig) -> dict:
    """Create state.json, or check that the run directory's rounds were computed as this config would compute
    them (refusing a resume that would change results, naming the keys), and record this config's hash."""
    if not run_dir.state_path.exists():
        return run_dir.create(
            {
                "version": STATE_VERSION,
                "config": dataclasses.asdict(c),
                "resolved": c.resolved(),
                "hash": c.result_hash(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
    saved = run_dir.state()  # checked: a hand-edited state.json is named, not a KeyError
    diff = c.differences(saved)
    if diff:
        raise UserError(
            f"{run_dir.path} holds a run with a different configuration (keys that differ: {diff}); "
            "use another output_dir, or restore those values to resume"
        )
    check_pairing(run_dir, c)
    if saved.get("version") != STATE_VERSION:  # a run of an earlier version: recorded as this one from now on
        run_dir.update_state(version=STATE_VERSION, resolved=c.resolved(), hash=c.result_hash())
    config = dataclasses.asdict(c)
    # rounds a shorter resume leaves on disk stay visible to the run's readers (reports, evaluated_rounds)
    config["rounds"] = max(c.rounds, saved["config"].get("rounds", 0))
    if saved["config"] != config:
        # Only keys a resume may change differ (rounds, output_dir, ...): readers of the run see what it now plans.
        run_dir.update_state(config=config)
    return run_dir.state()


def check_pairing(run_dir: RunDir, c: IterateConfig) -> None:
    """Every round already paired was paired with this config's pairing settings (min_gap, ...)."""
    now = c.pairing_settings()
    legacy = {k: run_dir.state()["config"].get(k, now[k]) for k in c.PAIRING_KEYS}
    for k in range(1, c.rounds + 1):
        if not run_dir.file(k, rundir.PAIRS).exists():
            continue
        used = {**legacy, **read_json(run_dir.file(k, rundir.PAIRING)).get("settings", {})}
        diff = sorted(key for key in now if used.get(key) != now[key])
        if diff:
            raise UserError(
                f"round {k}'s training rows were paired with "
                + ", ".join(f"{key}={used.get(key)!r}" for key in diff)
                + "; this config says "
                + ", ".join(f"{key}={now[key]!r}" for key in diff)
                + ": restore those values to resume (pairing settings "
                "may change only for rounds not yet paired)"
            )
