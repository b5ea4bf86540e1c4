# Sourced by the GPU scripts (bench/gpu/gpu.sh, gpu_iterate.sh, gpu_recipe.sh) from the repository root: PY,
# RESULTS_DIR, the carried wheels in WHEELS (default .whl) installed into /tmp/site and put first on PYTHONPATH (the
# lent machine has no network), the repository on PYTHONPATH (cringe need not be installed there), and a check that
# torch sees a GPU.
PY=${PY:-python3}
RESULTS_DIR=${RESULTS_DIR:-bench/results}
WHEELS=${WHEELS:-.whl}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
  # A carried transformers that this image's other packages cannot import falls back to the image's own.
  "$PY" -c "import transformers" 2>/dev/null || { echo "carried transformers does not import here; using the image's"; rm -rf /tmp/site/transformers*; }
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else '$0 needs a CUDA GPU')"
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '|', torch.cuda.get_device_name())"
mkdir -p "$RESULTS_DIR"
