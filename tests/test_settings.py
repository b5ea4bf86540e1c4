"""Each loss setting has one default (its settings dataclass in cringe.losses), read by the pure functions, the
trainer, `cringe train` and `cringe iterate`; run directories written before the settings were typed still resume;
binary data with one label is refused; an external method (TRL's RLOO) gets a model card."""

import dataclasses
import inspect
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from cringe import chunked as C
from cringe import losses as L
from cringe.cli.train import parse_train_args
from cringe.errors import UserError
from cringe.loop.config import STATE_VERSION, IterateConfig, load_config
from cringe.loop.run import IterativeRun
from cringe.models import build_tiny_model, model_card
from cringe.registry import LOSSES, loss_spec, method_of
from cringe.trainer import CringeConfig, CringeTrainer

FIXTURES = Path(__file__).parent / "data" / "state_v2"

# the functions whose keyword defaults must be their settings dataclass's
FUNCTIONS = [
    (L.pairwise_cringe_loss, L.PairwiseCringeSettings),
    (C.pairwise_cringe_loss, L.PairwiseCringeSettings),
    (L.binary_cringe_loss, L.BinaryCringeSettings),
    (C.binary_cringe_loss, L.BinaryCringeSettings),
    (L.dpo_loss, L.DPOSettings),
    (C.dpo_family_loss, L.DPOSettings),
]


def train_config(tmp_path, **kw):
    return CringeConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, **kw)


@pytest.mark.parametrize("function, settings_type", FUNCTIONS, ids=lambda x: getattr(x, "__module__", "") + ".")
def test_the_pure_functions_default_to_the_settings_dataclass(function, settings_type):
    parameters = inspect.signature(function).parameters
    for f in dataclasses.fields(settings_type):
        assert parameters[f.name].default == f.default, f"{function.__module__}.{function.__name__}: {f.name}"


def test_every_loss_has_settings_and_cringe_config_reads_them_at_their_defaults(tmp_path):
    assert LOSSES["pairwise_cringe"].settings_type is L.PairwiseCringeSettings
    assert L.PairwiseCringeSettings().alpha == 0.2 and L.BinaryCringeSettings().alpha == 1.0
    for name, spec in LOSSES.items():
        args = train_config(tmp_path, loss=name)
        assert args.loss_settings == spec.settings_type(), name
        assert spec.settings == tuple(f.name for f in dataclasses.fields(spec.settings_type))


def test_a_python_caller_gets_the_objective_the_command_line_trains_with(tmp_path):
    # Before: alpha defaulted to 1.0 in losses.pairwise_cringe_loss and to 0.2 in `cringe train`.
    *_, args = parse_train_args(["--dataset", "x", "--output_dir", str(tmp_path), "--use_cpu", "true"])
    torch.manual_seed(0)
    chosen, rejected = torch.randn(2, 5, 11), torch.randn(2, 6, 11)
    chosen_labels, rejected_labels = torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 6))
    uniforms = torch.rand(12)
    direct = L.pairwise_cringe_loss(chosen, chosen_labels, rejected, rejected_labels, uniforms=uniforms)
    trained = L.pairwise_cringe_loss(
        chosen, chosen_labels, rejected, rejected_labels, uniforms=uniforms, **dataclasses.asdict(args.loss_settings)
    )
    assert direct.loss.item() == trained.loss.item()
    alpha_one = L.pairwise_cringe_loss(chosen, chosen_labels, rejected, rejected_labels, uniforms=uniforms, alpha=1.0)
    assert alpha_one.loss.item() != direct.loss.item()  # the comparison can tell the old default apart


def test_given_settings_override_the_loss_defaults_and_are_checked(tmp_path):
    args = train_config(tmp_path, loss="binary_cringe", alpha=0.3, k=2)
    assert args.loss_settings == L.BinaryCringeSettings(alpha=0.3, k=2)
    assert args.alpha == 0.3 and args.margin is None  # unset stays unset: the default lives in one place
    for field, value, message in [
        ("margin_on", "max", "margin_on must be"),
        ("k", 0, "k must be >= 1"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("alpha", -0.5, "alpha must be >= 0"),
    ]:
        with pytest.raises(UserError, match=message):
            train_config(tmp_path, **{field: value})


def test_a_setting_the_loss_does_not_read_is_named_and_still_checked(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cringe.trainer"):
        args = train_config(tmp_path, loss="dpo", alpha=0.5)
    assert "loss dpo does not read alpha (it reads beta): ignored" in caplog.text
    assert args.loss_settings == L.DPOSettings()
    with pytest.raises(UserError, match="beta must be > 0"):
        train_config(tmp_path, loss="pairwise_cringe", beta=-1.0)


def test_the_command_line_help_and_bool_flags_come_from_the_settings():
    from cringe.cli.train import parsers

    help_text = " ".join(parsers()[""].format_help().split())
    assert "weight of the Cringe term (default: 0.2 for pairwise_cringe, 1.0 for binary_cringe)" in help_text
    *_, args = parse_train_args(["--dataset", "x", "--output_dir", "o", "--detach_gate", "--use_cpu", "true"])
    assert args.detach_gate is True  # a bare bool flag still means true
    *_, args = parse_train_args(["--dataset", "x", "--output_dir", "o", "--detach_gate", "false", "--use_cpu", "true"])
    assert args.loss_settings.detach_gate is False


# ----- resume: run directories written before the settings were typed ----------------------------------------------


def fixture_run(tmp_path, monkeypatch, name: str) -> Path:
    """The fixture's config and state.json in tmp_path (paths in both are relative to it)."""
    shutil.copy(FIXTURES / name / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "run").mkdir()
    shutil.copy(FIXTURES / name / "state.json", tmp_path / "run" / "state.json")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run" / "state.json"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_a_run_directory_of_state_version_2_resumes(tmp_path, monkeypatch, name):
    state_path = fixture_run(tmp_path, monkeypatch, name)
    before = json.loads(state_path.read_text())
    assert before["version"] == STATE_VERSION == 2
    IterativeRun(load_config("config.yaml", [])).check_state()  # accepted: no UserError
    after = json.loads(state_path.read_text())
    assert after["config"]["train"] == before["config"]["train"]  # only the keys the user set, as before
    assert "loss_settings" not in after["resolved"]  # that state's record is kept as it was


def test_a_changed_loss_setting_is_refused_and_one_given_at_its_default_is_not(tmp_path, monkeypatch):
    fixture_run(tmp_path, monkeypatch, "pairwise_cringe_defaults")
    with pytest.raises(UserError, match=r"keys that differ: \['train'\]"):
        IterativeRun(load_config("config.yaml", ["--train.alpha", "0.3"])).check_state()
    # alpha 0.2 is what the run trained with when it left alpha unset: the same run
    IterativeRun(load_config("config.yaml", ["--train.alpha", "0.2", "--train.margin_on", "sum"])).check_state()


def test_a_run_that_set_its_settings_resumes_only_with_them(tmp_path, monkeypatch):
    fixture_run(tmp_path, monkeypatch, "pairwise_cringe_set")
    config = load_config("config.yaml", [])
    assert config.loss_settings() == L.PairwiseCringeSettings(0.5, 2, 2.0, 0.5, "mean", False, False)
    IterativeRun(config).check_state()
    with pytest.raises(UserError, match=r"keys that differ: \['train'\]"):
        IterativeRun(load_config("config.yaml", ["--train.detach_gate", "true"])).check_state()


def test_a_new_run_records_its_loss_settings_and_refuses_a_changed_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "binary_cringe_defaults" / "config.yaml", tmp_path / "config.yaml")
    config = load_config("config.yaml", [])
    IterativeRun(config).check_state()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["resolved"]["loss_settings"] == {"alpha": 1.0, "k": 1, "detach_positive": False}
    # a later version with another default would compute another run: refused, not resumed silently
    changed = L.BinaryCringeSettings(alpha=0.5)
    monkeypatch.setattr(IterateConfig, "loss_settings", lambda self: changed)
    with pytest.raises(UserError, match=r"loss_settings \(resolved here: \{'alpha': 0.5"):
        IterativeRun(load_config("config.yaml", [])).check_state()


def test_the_loop_trains_with_the_settings_of_its_train_section(tmp_path, monkeypatch):
    fixture_run(tmp_path, monkeypatch, "dpo_beta")
    config = load_config("config.yaml", [])
    args, _ = config.training_arguments(tmp_path / "round-1")
    assert args.loss_settings == config.loss_settings() == L.DPOSettings(beta=0.2)


# ----- binary data with one label -----------------------------------------------------------------------------------


def binary_rows(labels):
    return [{"prompt": f"Q{i}?", "completion": f" answer {i}", "label": label} for i, label in enumerate(labels)]


@pytest.mark.parametrize("label, what", [(True, "plain SFT"), (False, "nothing to keep")])
def test_binary_cringe_refuses_data_with_one_label_unless_asked(tmp_path, tokenizer, label, what):
    model = build_tiny_model(tokenizer)
    rows = binary_rows([label] * 4)
    with pytest.raises(UserError, match=f"every training row is labelled .*{what}.*allow_single_label: true"):
        CringeTrainer(
            model, train_config(tmp_path, loss="binary_cringe"), train_dataset=rows, processing_class=tokenizer
        )
    allowed = train_config(tmp_path, loss="binary_cringe", allow_single_label=True)
    assert CringeTrainer(model, allowed, train_dataset=rows, processing_class=tokenizer).train_dataset is not None
    # both labels, or another loss on the same rows: no objection
    CringeTrainer(
        model,
        train_config(tmp_path, loss="binary_cringe"),
        train_dataset=binary_rows([True, False]),
        processing_class=tokenizer,
    )
    if label:
        CringeTrainer(model, train_config(tmp_path, loss="sft"), train_dataset=rows, processing_class=tokenizer)


def test_cringe_train_names_the_option_for_one_label(tmp_path):
    from cringe.cli.train import main

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in binary_rows([True] * 3)))
    argv = [
        "--dataset",
        str(data),
        "--loss",
        "binary_cringe",
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "true",
    ]
    with pytest.raises(UserError, match="allow_single_label"):
        main(argv + ["--report_to", "none"])


def test_the_loop_leaves_a_rounds_labels_to_its_pairing_report(tmp_path, monkeypatch):
    fixture_run(tmp_path, monkeypatch, "binary_cringe_defaults")
    args, _ = load_config("config.yaml", []).training_arguments(tmp_path / "round-1")
    assert args.allow_single_label is True
    args, _ = load_config("config.yaml", ["--train.allow_single_label", "false"]).training_arguments(tmp_path / "r")
    assert args.allow_single_label is False


# ----- methods trained by another library ---------------------------------------------------------------------------


def test_a_model_card_for_trls_rloo_names_the_method_without_our_registry(tmp_path):
    trl = pytest.importorskip("trl")
    args = trl.RLOOConfig(output_dir=str(tmp_path), beta=0.05, num_generations=4, report_to="none", use_cpu=True)
    assert method_of(args) == ("rloo", {"beta": 0.05, "num_generations": 4})
    card = model_card(args, base_model="m", data="d", steps=3)
    assert "- Loss: `rloo` (beta=0.05, num_generations=4)" in card
    with pytest.raises(UserError, match="loss must be one of"):
        loss_spec("rloo")  # still not a loss `cringe train` takes
