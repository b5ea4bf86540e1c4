#!/usr/bin/env bash
# One GPU (H100/H200), at most about 8 minutes, nothing downloaded: two rounds of `cringe iterate` with a random
# ~1.2B Llama-3-style policy and a random classifier reward model (bench/gpu/gpu_iterate.py): seconds per stage,
# sampling tokens/s, GPU memory peak per stage, and a check that every stage ran on the GPU; then one round's
# training under FSDP2 and ZeRO-2/3 (bench/gpu/gpu_sharded_train.py) checked against the plain path.
#   RESULTS_DIR=$OUT bash bench/gpu/gpu_iterate.sh          (repository root; python with torch, transformers)
# With no network there, put wheels of what is missing in WHEELS (default .whl): installed into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 420 "$PY" bench/gpu/gpu_iterate.py --results-dir "$RESULTS_DIR" "$@" || echo "gpu_iterate.py failed (status $?)"
# `cringe train` under the shipped FSDP2 (and ZeRO-2/3 where deepspeed imports) configs against the plain run
exec timeout 150 "$PY" bench/gpu/gpu_sharded_train.py --results-dir "$RESULTS_DIR"
