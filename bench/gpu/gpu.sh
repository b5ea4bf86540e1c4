#!/usr/bin/env bash
# One GPU (H100/H200 class), about 5 minutes: (1) the chunked losses equal the plain ones at a real size on the GPU
# (bench/gpu/cuda_parity.py); (2) the train-step comparison on a random 1.5B Llama-3-style model with a 128k vocabulary,
# 4 pairs x 2,048-token sequences (1,024 prompt + 1,024 completion), bf16 weights: sft, Pairwise Cringe (plain,
# chunked, + gradient checkpointing, + optimizer in backward), our DPO and TRL's DPOTrainer, one table.
#   bash bench/gpu/gpu.sh [extra train_step.py arguments]      (repository root; python with torch, transformers, trl)
# CONFIGS (comma-separated train_step.py names) picks the rows; RESULTS_DIR (default bench/results) receives the
# table, the raw numbers and any failed configuration's traceback.
# With no network there, put wheels of what is missing (trl, datasets, dill, multiprocess, transformers) in WHEELS
# (default .whl): they are installed into /tmp/site and put first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
"$PY" -c "import trl; print('trl', trl.__version__)" || echo "trl does not import: its rows will fail"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
"$PY" bench/gpu/cuda_parity.py 2>&1 | tee "$RESULTS_DIR/cuda_parity.txt" || echo "cuda_parity failed; the timings still run"
DEFAULT_CONFIGS="sft grad ckpt,pairwise_cringe,pairwise_cringe chunked,pairwise_cringe chunked bf16 grad ckpt"
DEFAULT_CONFIGS+=",pairwise_cringe chunked bf16 grad ckpt optim-in-bwd,dpo (ref copy),dpo (precomputed ref) chunked"
DEFAULT_CONFIGS+=",trl dpo (ref copy),trl dpo (precompute_ref_log_probs),trl dpo (ref copy; fp32; no grad ckpt)"
CONFIGS=${CONFIGS:-$DEFAULT_CONFIGS}  # the sft baseline is always added
exec "$PY" bench/train_step.py --device cuda --models llama128k-1b --pairs 4 --prompt-tokens 1024 \
  --completion-tokens 1024 --steps 5 --warmup 2 --configs "$CONFIGS" --config-timeout 150 \
  --results-dir "$RESULTS_DIR" --tag gpu "$@"
