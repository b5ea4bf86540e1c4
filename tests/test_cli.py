"""The command line: `cringe train` end to end (every loss on every dataset format, YAML + overrides, saved
models load, 2-process CPU DDP through `accelerate launch` matching the single-process run), and what every verb
does with --help, --config, both flag spellings, typed values and user errors (one line, exit status 2)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cringe.cli import main
from cringe.cli.train import parse_train_args

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
CONFIG = ROOT / "examples" / "train_tiny.yaml"
PAIRWISE_FORMATS = ["pairs", "pairs_conversational", "implicit_pairs", "alpacafarm", "ultrafeedback_style"]
BINARY_FORMATS = ["binary", "binary_conversational"]
LOSSES = ["pairwise_cringe", "binary_cringe", "dpo", "ipo", "hinge", "sft"]


def run_train(tmp_path, *flags):
    out = tmp_path / "model"
    main(["train", "--config", str(CONFIG), "--output_dir", str(out), "--disable_tqdm", "true", *flags])
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else None
    return out, state


@pytest.mark.parametrize("fmt", PAIRWISE_FORMATS + BINARY_FORMATS)
@pytest.mark.parametrize("loss", LOSSES)
def test_train_every_loss_on_every_format(tmp_path, monkeypatch, loss, fmt):
    from transformers import AutoModelForCausalLM

    import cringe.cli.train

    history = {}
    original = cringe.cli.train.save_for_inference

    def capture(trainer, output_dir, **kwargs):
        history["logs"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        original(trainer, output_dir, **kwargs)

    monkeypatch.setattr(cringe.cli.train, "save_for_inference", capture)
    flags = ["--loss", loss, "--dataset", str(DATA / f"{fmt}.jsonl"), "--debug"]
    if fmt in BINARY_FORMATS and loss not in ("binary_cringe", "sft"):
        with pytest.raises(ValueError, match="needs pairs"):
            run_train(tmp_path, *flags)
        return
    out, _ = run_train(tmp_path, *flags)
    logs = history["logs"]
    assert len(logs) >= 2 and logs[-1] < logs[0], logs
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 260


@pytest.mark.parametrize("config_flag", ["separate", "equals"])
def test_yaml_values_are_typed_and_flags_override_them(tmp_path, config_flag):
    cfg = tmp_path / "run.yaml"
    # YAML 1.1 reads 1e-4 (no dot) as a string: it must still reach TrainingArguments as a float.
    cfg.write_text("dataset: a.jsonl\nloss: dpo\nbeta: 0.3\nlearning_rate: 1e-4\noutput_dir: x\n")
    given = ["--config", str(cfg)] if config_flag == "separate" else [f"--config={cfg}"]
    model_args, data_args, lora_args, config = parse_train_args(given + ["--beta", "0.5", "--use-peft", "true"])
    assert config.loss == "dpo" and config.beta == 0.5
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert data_args.dataset == "a.jsonl" and lora_args.use_peft and config.output_dir == "x"


def cli_error(capsys, argv) -> str:
    """Run `cringe ARGV`, expect a user error: exit status 2 and one line on stderr; return the line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_unknown_yaml_key_is_refused_with_a_suggestion(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: a.jsonl\nbetta: 0.3\n")
    err = cli_error(capsys, ["train", "--config", str(cfg)])
    assert "unknown key 'betta'" in err and "did you mean 'beta'?" in err


def test_missing_dataset_is_refused(capsys):
    assert "--dataset is required" in cli_error(capsys, ["train", "--loss", "dpo"])


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    err = cli_error(capsys, ["train", "--dataset", str(tmp_path / "nope.jsonl")])
    assert err.startswith("cringe train: error:") and "nope.jsonl" in err
    err = cli_error(capsys, ["train", "--dataset", str(DATA / "pairs.jsonl"), "--loss", "kto"])
    assert "invalid choice" in err and "kto" in err
    assert "unknown command 'trian'" in cli_error(capsys, ["trian"])
    assert "did you mean 'train'" in cli_error(capsys, ["trian"])


def test_bad_data_stops_before_training_and_names_the_row(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in (DATA / "pairs.jsonl").read_text().splitlines()]
    rows[5]["rejected"] = rows[5]["chosen"]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    err = cli_error(
        capsys, ["train", "--config", str(CONFIG), "--dataset", str(bad), "--output_dir", str(tmp_path / "model")]
    )
    assert err == "cringe train: error: row 5, field 'rejected': identical to chosen"
    assert not (tmp_path / "model").exists()
    # --debug shows the traceback instead: the exception propagates
    with pytest.raises(ValueError, match=r"row 5, field 'rejected'"):
        main(["train", "--config", str(CONFIG), "--dataset", str(bad), "--output_dir", str(tmp_path / "m"), "--debug"])


def test_only_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    # Every FileNotFoundError used to become "error: X: no such file or directory", exit 2: a bug's missing file
    # (one of ours) too, its traceback hidden. User paths are checked where they are read; the rest propagates.
    import cringe.cli.env

    def broken(argv):
        raise FileNotFoundError(2, "No such file or directory", "/internal/cache/file")

    monkeypatch.setattr(cringe.cli.env, "main", broken)
    with pytest.raises(FileNotFoundError):
        main(["env"])
    for spec in (str(tmp_path / "no-model"), "./no-model", "runs/a/model"):
        err = cli_error(
            capsys,
            ["train", "--config", str(CONFIG), "--model_name_or_path", spec, "--output_dir", str(tmp_path / "out")],
        )
        assert err == f"cringe train: error: {spec}: no such model folder", err


@pytest.mark.parametrize("field_name", ["prompt", "chosen"])
def test_token_ids_in_a_text_dataset_are_refused_naming_row_and_field(tmp_path, capsys, field_name):
    # A list of ints where text belongs was read as a conversation's "prompt" and dropped: the row trained on the
    # shared prefix of chosen and rejected instead, rc 0, model saved.
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in (DATA / "pairs.jsonl").read_text().splitlines()]
    rows[3][field_name] = [1, 2, 3, 4]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    err = cli_error(
        capsys, ["train", "--config", str(CONFIG), "--dataset", str(bad), "--output_dir", str(tmp_path / "model")]
    )
    assert err.startswith(f"cringe train: error: row 3, field '{field_name}': a list of token ids"), err
    assert "prompt_ids" in err
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("verb", ["train", "iterate", "evaluate", "demo", "env"])
def test_every_verb_has_help(capsys, verb):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cringe {verb}") and "--config" in out


def test_iterate_help_lists_the_sections(capsys):
    with pytest.raises(SystemExit):
        main(["iterate", "--help"])
    out = capsys.readouterr().out
    assert "--train.learning_rate" in out and "sampling" in out and "--output_dir OUTPUT_DIR, --output-dir" in out


def test_dry_run_is_in_the_help_and_the_generated_reference(capsys):
    # It was handled before the parser, so neither `cringe iterate --help` nor the reference listed it.
    import importlib.util

    from cringe.cli import verb_parsers

    with pytest.raises(SystemExit):
        main(["iterate", "--help"])
    assert "--dry-run, --dry_run" in capsys.readouterr().out
    spec = importlib.util.spec_from_file_location("reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert "| `--dry_run` | `dry_run` | bool |" in hook.verb_page("iterate", verb_parsers()["iterate"])


REQUIRED = ["--model", "m", "--prompts", "p.jsonl", "--output_dir", "o"]


@pytest.mark.parametrize(
    "flags, hint",
    [
        (["--alpha", "0.2"], "unknown option --alpha (did you mean '--train.alpha'?)"),  # a section's key, exactly
        (["--alpah", "0.2"], "unknown option --alpah (did you mean '--train.alpha'?)"),  # a section's key, misspelt
        (["--roundz", "2"], "unknown option --roundz (did you mean '--rounds'?)"),  # a top-level flag, misspelt
        (["--max_new_tokens", "8"], "(did you mean '--sampling.max_new_tokens'?)"),
    ],
)
def test_unknown_flag_suggests_a_sections_key(capsys, flags, hint):
    assert hint in cli_error(capsys, ["iterate", *REQUIRED, *flags])


def test_unknown_yaml_key_suggests_a_sections_key(tmp_path, capsys):
    cfg = tmp_path / "iterate.yaml"
    cfg.write_text("model: m\nprompts: p.jsonl\noutput_dir: o\nalpha: 0.2\n")
    err = cli_error(capsys, ["iterate", "--config", str(cfg)])
    assert "unknown key 'alpha' (did you mean 'train: {alpha: ...}'?)" in err


def test_the_command_line_and_light_verbs_help_import_no_torch():
    # torch takes seconds to import: `cringe --help`, and the --help of verbs whose flags need none of it, answer
    # without it; the denormals set-up (which imports torch) runs only when a verb runs. train, iterate, sample
    # and demo need torch for their flags' dataclasses (CringeConfig is transformers' TrainingArguments).
    script = """if True:
        import sys
        import cringe.cli
        assert "torch" not in sys.modules, "import cringe.cli"
        for argv in (["--help"], ["score", "--help"], ["evaluate", "--help"], ["report", "-h"], ["env", "--help"]):
            try:
                cringe.cli.main(argv)
            except SystemExit as exit:
                assert exit.code == 0, (argv, exit.code)
            assert "torch" not in sys.modules, argv
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "verb, flags",
    [
        ("train", ["--output_dir", "--output-dir"]),
        ("evaluate", ["--max_new_tokens", "--max-new-tokens"]),
        ("demo", ["--output_dir", "--output-dir"]),
        ("iterate", ["--round_prompts", "--round-prompts"]),
    ],
)
def test_both_flag_spellings_everywhere(capsys, verb, flags):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in flags)


def test_version_and_env(capsys):
    import cringe

    main(["--version"])
    assert capsys.readouterr().out.strip() == f"cringe {cringe.__version__}"
    main(["env"])
    out = capsys.readouterr().out
    assert "- torch: " in out and "- transformers: " in out and "- vllm: " in out and "CUDA devices" in out


def test_console_script_is_installed():
    exe = shutil.which("cringe") or str(Path(sys.executable).parent / "cringe")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "cringe train --config" in result.stdout
    result = subprocess.run([exe, "iterate"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().startswith("cringe iterate: error: the following")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.slow  # about 10-40 s (subprocesses); make test-slow runs it
def test_two_process_ddp_matches_single_process(tmp_path):
    """accelerate launch, 2 CPU processes (gloo), per-device batch 4 == 1 process, batch 8."""
    common = [
        "train",
        "--config",
        str(CONFIG),
        "--loss",
        "pairwise_cringe",
        "--k",
        "1",
        "--optim",
        "sgd",
        "--learning_rate",
        "0.5",
        "--max_steps",
        "2",
        "--max_grad_norm",
        "0",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "cringe", *common, "--per_device_train_batch_size", "8", "--output_dir", str(single)],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        # accelerate's `--cpu` launcher starts one process; the multi-process (torchrun) launcher with the
        # config's use_cpu=true gives CPU DDP over gloo.
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "cringe",
            *common,
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(ddp),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    a, b = _weights(single), _weights(ddp)
    start = _weights_of_fresh_model()
    assert any(not torch.allclose(a[k], start[k]) for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights_of_fresh_model():
    from cringe.models import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model(build_tiny_tokenizer())
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_free_form_sections_keep_the_files_strings_and_read_flags_as_yaml(tmp_path):
    """A judge template with "A: {a}" in a reward file stays a string (it was read as YAML a second time: a
    traceback); a flag's value is still typed."""
    from cringe.config import make_parser, parse_with_sections

    config = tmp_path / "c.yaml"
    config.write_text('reward: {type: judge, template: "Pick one.\\nA: {a}\\nB: {b}", retries: "3"}\n')
    parser = make_parser([], prog="t")
    _, sections = parse_with_sections(
        parser,
        ["--config", str(config), "--reward.concurrency", "4", "--reward.note", "Pick. {p}\nA: {a}"],
        0,
        {"reward": None},
    )
    assert sections["reward"] == {
        "type": "judge",
        "template": "Pick one.\nA: {a}\nB: {b}",
        "retries": "3",
        "concurrency": 4,
        "note": "Pick. {p}\nA: {a}",
    }  # not YAML: as given
