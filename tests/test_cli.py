"""`cringe train` end to end: every loss on every dataset format, YAML + overrides, saved models load,
and 2-process CPU DDP through `accelerate launch` matching the single-process run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cringe.cli import main, parse_train_args

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
CONFIG = ROOT / "examples" / "train_tiny.yaml"
PAIRWISE_FORMATS = ["pairs", "pairs_conversational", "implicit_pairs", "alpacafarm"]
BINARY_FORMATS = ["binary", "binary_conversational"]
LOSSES = ["pairwise_cringe", "binary_cringe", "dpo", "ipo", "hinge", "sft"]


def run_train(tmp_path, *flags):
    out = tmp_path / "model"
    main(["train", "--config", str(CONFIG), "--output_dir", str(out), "--disable_tqdm", "true", *flags])
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else None
    return out, state


    history = json.loads((Path(out_dir) / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.parametrize("fmt", PAIRWISE_FORMATS + BINARY_FORMATS)
@pytest.mark.parametrize("loss", LOSSES)
def test_train_every_loss_on_every_format(tmp_path, monkeypatch, loss, fmt):
    from transformers import AutoModelForCausalLM

    from cringe import cli

    history = {}
    original = cli.save_for_inference

    def capture(trainer, output_dir):
        history["logs"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        original(trainer, output_dir)

    monkeypatch.setattr(cli, "save_for_inference", capture)
    flags = ["--loss", loss, "--dataset", str(DATA / f"{fmt}.jsonl")]
    if fmt in BINARY_FORMATS and loss not in ("binary_cringe", "sft"):
        with pytest.raises(ValueError, match="needs pairs"):
            run_train(tmp_path, *flags)
        return
    out, _ = run_train(tmp_path, *flags)
    logs = history["logs"]
    assert len(logs) >= 2 and logs[-1] < logs[0], logs
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 260


def test_yaml_values_and_command_line_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: a.jsonl\nloss: dpo\nbeta: 0.3\nlearning_rate: 1.0e-4\noutput_dir: x\n")
    model_args, data_args, config = parse_train_args(["--config", str(cfg), "--beta", "0.5", "--use_peft", "true"])
    assert config.loss == "dpo" and config.beta == 0.5 and config.learning_rate == 1e-4
    assert data_args.dataset == "a.jsonl" and model_args.use_peft


def test_unknown_yaml_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: a.jsonl\nbetta: 0.3\n")
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(cfg)])
    assert "unknown keys ['betta']" in capsys.readouterr().err


def test_missing_dataset_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--loss", "dpo"])
    assert "--dataset is required" in capsys.readouterr().err


def test_bad_data_stops_before_training_and_names_the_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in (DATA / "pairs.jsonl").read_text().splitlines()]
    rows[5]["rejected"] = rows[5]["chosen"]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"row 5, field 'rejected': identical to chosen"):
        run_train(tmp_path, "--dataset", str(bad))
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_console_script_is_installed():
    exe = shutil.which("cringe") or str(Path(sys.executable).parent / "cringe")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "cringe train --config" in result.stdout


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_two_process_ddp_matches_single_process(tmp_path):
    """accelerate launch, 2 CPU processes (gloo), per-device batch 4 == 1 process, batch 8."""
    common = ["train", "--config", str(CONFIG), "--loss", "pairwise_cringe", "--k", "1", "--optim", "sgd",
              "--learning_rate", "0.5", "--max_steps", "2", "--max_grad_norm", "0", "--disable_tqdm", "true",
              "--dataloader_num_workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "cringe", *common, "--per_device_train_batch_size", "8",
                    "--output_dir", str(single)], check=True, env=env, capture_output=True)
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        # accelerate's `--cpu` launcher starts one process; the multi-process (torchrun) launcher with the
        # config's use_cpu=true gives CPU DDP over gloo.
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "cringe", *common,
         "--per_device_train_batch_size", "4", "--output_dir", str(ddp)],
        env=env, capture_output=True, text=True,
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
