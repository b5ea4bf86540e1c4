#!/usr/bin/env bash
# One GPU (H100/H200), under 8 minutes, nothing downloaded: recipes/ultrafeedback_pairwise_cringe_1b.yaml at its
# real shapes (bench/gpu/gpu_recipe.py): a random Llama-3.2-1B-shaped policy, a random Skywork-Reward-V2-Qwen3-0.6B-shaped
# classifier with its own tokenizer, 64 prompts x 8 samples, 2 rounds; seconds, tokens/s and GPU memory per stage.
#   RESULTS_DIR=$OUT bash bench/gpu/gpu_recipe.sh [--recipe recipes/ultrafeedback_dpo_1b.yaml] [gpu_recipe.py flags]
# NOT RUN YET: written to the documented APIs in a session without a GPU (docs/scale.md says so).
# With no network there, put wheels of what is missing in WHEELS (default .whl): installed into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import vllm; print('vllm', vllm.__version__)" 2>/dev/null || echo "vllm does not import: sampling with transformers"
exec timeout 470 "$PY" bench/gpu/gpu_recipe.py --results-dir "$RESULTS_DIR" "$@"
