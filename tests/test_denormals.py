"""Denormal floats flushed to zero (cringe.denormals): the same losses and gradients, every thread, every process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cringe import chunked as C
from cringe import losses as L
from cringe.denormals import denormals_flushed, flush_denormals

ROOT = Path(__file__).resolve().parents[1]
SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


@pytest.fixture
def restore_flushing():
    yield
    flush_denormals()  # back to what the environment asks for (on by default)


def confident_pairs(seed=0, pairs=3, tokens=5, vocab=512, hidden=16):
    """A linear head so confident that most of the vocabulary's probabilities are subnormal or zero."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * pairs * tokens, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * 6.0
    targets = (h @ w.T).argmax(-1)  # the model's own favourites: the regime of a model that has learnt its data
    targets[::3] = torch.randint(vocab, (targets[::3].numel(),), generator=g)
    seq_index = torch.arange(2 * pairs).repeat_interleave(tokens)
    uniforms = torch.rand(pairs * tokens, generator=g)
    return h, w, targets, seq_index, pairs, uniforms


def loss_and_grads(kind, flush):
    flush_denormals(flush)
    h, w, targets, seq_index, pairs, uniforms = confident_pairs()
    h.requires_grad_(True)
    w.requires_grad_(True)
    if kind == "chunked":
        loss, _ = C.pairwise_cringe_loss(
            h, w, None, targets, seq_index, pairs, alpha=1.0, margin=1.0, uniforms=uniforms, chunk_size=7
        )
    else:
        logits = (h @ w.T).view(2 * pairs, -1, w.shape[0])
        labels = targets.view(2 * pairs, -1)
        loss = L.pairwise_cringe_loss(
            logits[:pairs], labels[:pairs], logits[pairs:], labels[pairs:], alpha=1.0, margin=1.0, uniforms=uniforms
        ).loss
    gh, gw = torch.autograd.grad(loss, (h, w))
    return loss.detach(), gh, gw


def test_the_test_data_lives_in_the_subnormal_range(restore_flushing):
    flush_denormals(False)
    h, w, *_ = confident_pairs()
    p = torch.softmax(h @ w.T, -1)
    subnormal = ((p > 0) & (p < SMALLEST_NORMAL)).sum().item()
    assert subnormal > 100, subnormal  # without flushing, the softmax is full of them
    flush_denormals(True)
    p = torch.softmax(h @ w.T, -1)
    assert ((p > 0) & (p < SMALLEST_NORMAL)).sum().item() == 0


@pytest.mark.parametrize("kind", ["plain", "chunked"])
def test_losses_and_gradients_match_with_flushing_on(kind, restore_flushing):
    plain = loss_and_grads(kind, flush=False)
    flushed = loss_and_grads(kind, flush=True)
    for a, b in zip(plain, flushed):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_flushing_reaches_a_thread_pool_that_started_before_it(restore_flushing):
    """torch.set_flush_denormal alone sets the calling thread's bits; the pool's workers were started (by the
    tests before this one, and by this multiplication) without them."""
    flush_denormals(False)
    torch.full((1 << 18,), 1.0).mul(2.0)  # the pool is running
    assert not denormals_flushed()
    assert flush_denormals(True) and denormals_flushed()
    if torch.get_num_threads() > 1:
        torch.set_flush_denormal(False)  # main thread off: the probe sees the pool's other half
        assert not denormals_flushed()


def cringe_env(extra_env=None, launcher=()):
    env = {**os.environ, **(extra_env or {})}
    out = subprocess.run(
        [*launcher, "-m", "cringe", "env"] if launcher else [sys.executable, "-m", "cringe", "env"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if "denormal" in line]


def test_every_cringe_process_flushes_unless_turned_off():
    """`python -m cringe VERB` flushes before the verb (the loop's stage children, `python -m cringe.loop.child`,
    flush the same way); CRINGE_FLUSH_DENORMAL=0 reaches the child and turns it off."""
    threads = {"OMP_NUM_THREADS": "2"}
    assert cringe_env(threads) == [
        "- CPU denormal floats: flushed to zero on all 2 CPU threads (CRINGE_FLUSH_DENORMAL=0 turns it off)"
    ]
    assert cringe_env({**threads, "CRINGE_FLUSH_DENORMAL": "0"}) == [
        "- CPU denormal floats: off (CRINGE_FLUSH_DENORMAL=0)"
    ]


@pytest.mark.slow  # about 8 s (2 launched processes); make test-slow runs it
def test_every_accelerate_launched_rank_flushes():
    from cringe.loop.processes import launch_command

    command = launch_command({"config_file": str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "num_processes": 2})
    lines = cringe_env({"OMP_NUM_THREADS": "1"}, launcher=command[:-2])
    assert (
        lines
        == ["- CPU denormal floats: flushed to zero on all 1 CPU threads (CRINGE_FLUSH_DENORMAL=0 turns it off)"] * 2
    )
