#!/usr/bin/env bash
# The train-step comparison on one GPU (H100/H200 class): a random ~1.2B Llama-3-style model with a 128k
# vocabulary, 2,048-token sequences (1,024 prompt + 1,024 completion), bf16; sft, Pairwise Cringe (plain and
# chunked), our DPO and TRL's DPOTrainer, side by side, one table. Expected to finish in under 8 minutes.
#   bash bench/gpu.sh            (from the repository root, in an environment with the package and trl)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh needs a CUDA GPU')"
"$PY" -c "import trl" 2>/dev/null || "$PY" -m pip install -q "trl>=1.0"
exec "$PY" bench/train_step.py --device cuda --models llama128k-1b --pairs 4 \
  --prompt-tokens 1024 --completion-tokens 1024 --steps 5 --warmup 2 "$@"
