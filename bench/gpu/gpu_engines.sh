#!/usr/bin/env bash
# One GPU machine, about 6 minutes, nothing downloaded (wheels carried in .whl; deepspeed's built here with
# `DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.19.8`, pure Python):
#   1. the host CPU's price of a subnormal operand, and bf16 against fp32 (bench/denormals.py --configs none,
#      bench/cpu_dtype.py): this project's CPUs change from session to session, and both decide CPU defaults;
#   2. a tiny model trained on its data until confident, on the host CPU, flushing on and off (step times);
#   3. `cringe train` under FSDP2 and DeepSpeed ZeRO-2/3 on the GPU against the plain run.
#   RESULTS_DIR=$OUT bash bench/gpu_engines.sh          (repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
grep -m1 "model name" /proc/cpuinfo
CUDA_VISIBLE_DEVICES= timeout 90 "$PY" bench/denormals.py --configs none --results-dir "$RESULTS_DIR/cpu"
CUDA_VISIBLE_DEVICES= timeout 150 "$PY" bench/cpu_dtype.py | tee "$RESULTS_DIR/cpu/cpu_dtype.md"
CUDA_VISIBLE_DEVICES= timeout 150 "$PY" bench/denormals.py --models tiny --pairs tiny=examples/data/pairs.jsonl \
  --configs fp32,fp32-noflush --epochs 30 --learning-rate 3e-3 --results-dir "$RESULTS_DIR/tiny"
timeout 300 "$PY" bench/gpu_sharded_train.py --results-dir "$RESULTS_DIR"
