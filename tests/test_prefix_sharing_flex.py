"""Prefix-shared rows under FlexAttention (cringe.prefix_sharing.block_mask): the BlockMask's mask_mod allows
exactly what the dense mask allows, and a flex_attention model on shared rows gives the plain sdpa path's log-probs
and losses.

On a CPU, PyTorch runs FlexAttention forward only (its backward raises NotImplementedError there), so gradients are
not compared here; bench/gpu/prefix_sharing_flex.py compares them on a GPU. transformers compiles flex_attention;
these tests run it eagerly (`torch.compiler.set_stance("force_eager")`: the unfused reference implementation, the
same arithmetic), except the slow one, which runs the compiled kernel with static shapes.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask

from cringe import losses as L
from cringe import prefix_sharing as P

from .test_prefix_sharing import FAMILIES, PAD, RTOL, pair_rows, plain_logits, shared_batch, tiny_model, token_logps

ROOT = Path(__file__).resolve().parents[1]


def layouts():
    """(name, batch): a row per pair (right-padded), packed into rows of 40, and several pairs in rows longer
    than FlexAttention's 128-token block (so whole blocks are skipped)."""
    rows = pair_rows(3, seed=0)
    long_rows = pair_rows(48, seed=1)
    return [
        ("row-per-pair", P.build_shared_rows(rows, PAD)),
        ("packed", P.build_shared_rows(rows, PAD, pack=True, max_row_tokens=40)),
        ("long-packed", P.build_shared_rows(long_rows, PAD, pack=True, max_row_tokens=500)),
    ]


@pytest.mark.parametrize("window", [None, 1, 3, 4], ids=["full", "window-1", "window-3", "window-4"])
@pytest.mark.parametrize("layout", range(3), ids=["row-per-pair", "packed", "long-packed"])
def test_mask_mod_allows_exactly_what_the_dense_mask_allows(layout, window):
    _, batch = layouts()[layout]
    rows, t = batch["input_ids"].shape
    dense = create_mask(P.shared_mask_mod(batch, window), rows, 1, t, t, device="cpu")
    assert dense.shape == (rows, 1, t, t)
    assert torch.equal(dense[:, 0], P.allowed_attention(batch, window))


def test_block_mask_skips_what_no_query_may_see():
    _, batch = layouts()[2]
    mask = P.block_mask(batch)
    rows, t = batch["input_ids"].shape
    assert isinstance(mask, BlockMask) and mask.shape == (rows, 1, t, t) and t > 2 * 128
    assert mask.kv_num_blocks.device == batch["input_ids"].device
    # a block is computed exactly where some query in it may see some key in it
    block = 128
    allowed = torch.nn.functional.pad(P.allowed_attention(batch), (0, -t % block, 0, -t % block))
    n = allowed.shape[1] // block
    touched = allowed.view(rows, n, block, n, block).any(dim=4).any(dim=2)
    assert torch.equal(mask.to_dense()[:, 0].bool(), touched)
    # across pairs too, not only above the diagonal: fewer blocks computed than a causal mask computes
    causal = create_block_mask(lambda b, h, q, kv: q >= kv, rows, None, t, t, device="cpu")
    assert mask.sparsity() > causal.sparsity() + 10


def test_the_mask_per_layer_type_is_a_block_mask_each():
    model = tiny_model("gemma3", "flex_attention", window=3)
    assert P.can_share_prefix(model) == (True, "ok")
    _, batch = layouts()[1]
    masks = P.attention_masks(model, batch, torch.float32)
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert all(isinstance(m, BlockMask) for m in masks.values())
    rows, t = batch["input_ids"].shape
    for kind, window in (("full_attention", None), ("sliding_attention", 3)):
        dense = create_mask(masks[kind].mask_mod, rows, 1, t, t, device="cpu")[:, 0]
        assert torch.equal(dense, P.allowed_attention(batch, window))


def forward_parity(family: str, pack: bool) -> None:
    """Shared rows on the flex_attention model against plain rows on the same weights under sdpa: per-token and
    per-sequence log-probs, and the DPO and Pairwise Cringe losses (forward only: see the module docstring)."""
    flex, sdpa = tiny_model(family, "flex_attention"), tiny_model(family, "sdpa")
    assert P.can_share_prefix(flex) == (True, "ok")
    rows = pair_rows(3, seed=FAMILIES.index(family))
    batch = shared_batch(rows, pack)
    if pack:
        assert batch["input_ids"].shape[0] < len(rows)
    b = len(rows)
    with torch.no_grad():
        plain_z, plain_y = plain_logits(sdpa, rows)
        shared_z, shared_y = P.answer_logits(flex, batch)
    torch.testing.assert_close(token_logps(shared_z, shared_y), token_logps(plain_z, plain_y), rtol=RTOL, atol=1e-6)
    plain_seq, plain_n = L.sequence_logps(plain_z, plain_y)
    shared_seq, shared_n = L.sequence_logps(shared_z, shared_y)
    torch.testing.assert_close(shared_seq, plain_seq, rtol=RTOL, atol=1e-5)
    assert torch.equal(shared_n, plain_n)
    ref = plain_seq + torch.linspace(-1, 1, 2 * b)

    def losses(z, y):
        seq, _ = L.sequence_logps(z, y)
        dpo = L.dpo_loss(seq[:b], seq[b:], ref[:b], ref[b:], beta=0.1)[0].mean()
        g = torch.Generator().manual_seed(7)
        cringe = L.pairwise_cringe_loss(z[:b], y[:b], z[b:], y[b:], alpha=0.5, margin=1.0, generator=g).loss
        return dpo, cringe

    torch.testing.assert_close(losses(shared_z, shared_y), losses(plain_z, plain_y), rtol=RTOL, atol=0)


@pytest.mark.parametrize("pack", [False, True], ids=["row-per-pair", "packed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_flex_shared_rows_equal_the_plain_sdpa_path(family, pack):
    with torch.compiler.set_stance("force_eager"):
        forward_parity(family, pack)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_compiled_flex_shared_rows_equal_the_plain_sdpa_path(family):
    """transformers' default: flex_attention compiled (on a CPU, inductor's C++ template). Static shapes: with
    dynamo's automatic dynamic shapes, torch 2.13's CPU template failed to compile (CppCompileError,
    `cur_qSplitSize8` undeclared) on the second or third batch shape of the sliding-window models."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        for pack in (False, True):
            forward_parity(family, pack)


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_measures_the_cpu_benchmarks_shapes():
    gpu = load_script(ROOT / "bench" / "gpu" / "prefix_sharing_flex.py")
    cpu = load_script(ROOT / "bench" / "prefix_sharing.py")
    assert gpu.SHAPES == cpu.SHAPES


@pytest.mark.slow  # about 7 s (a subprocess); make test-slow runs it
def test_the_gpu_benchmarks_smoke_path_runs(tmp_path):
    """bench/gpu/prefix_sharing_flex.py --device cpu --tiny: every variant that runs on a CPU (forward only), its
    parity check passing, and the table written."""
    script = ROOT / "bench" / "gpu" / "prefix_sharing_flex.py"
    command = [sys.executable, str(script), "--device", "cpu", "--tiny", "--pairs", "2", "--warmup", "1"]
    command += ["--repeats", "1", "--results-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (table,) = tmp_path.glob("prefix_sharing_flex-*-cpu-tiny.md")
    text = table.read_text()
    assert "160 / 32 / 32" not in text  # the tiny shapes are an eighth as long
    for variant in ("plain", "shared-sdpa", "shared-flex"):
        assert f"| long-prompt chat (prompt/answer 5): 20 / 4 / 4 | {variant} |" in text
    assert "| uf | shared-flex |" in text
