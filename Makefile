# wmoe: set-up-and-run targets. Everything installs into ./.venv on first use (a fresh machine needs only python3).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wmoe-installed
# torch/torchvision pinned to the builds this project is tested with (library code also runs on torch 2.11).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench-cpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PINS)
	# more tensorrt.plugin frontends for tests/test_trt_frontend.py: 10.9 (first with aot_impl), 11.4 (newest)
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trt-frontends/10.9 tensorrt-cu12-bindings==10.9.0.34
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trt-frontends/11.4 tensorrt-cu12-bindings==11.4.0.106
	touch $(STAMP)

install: $(STAMP)

## The main job: demo data -> short training -> zero-shot evaluation -> predictions -> report (CPU, a few minutes).
demo: install
	$(BIN)/wmoe demo --out demo_out

## The test suite (CPU; Triton kernels run under the interpreter).
test: install
	$(BIN)/python -m pytest -q -n 2 --timeout 900 $(PYTEST_ARGS)

bench-cpu: install
	$(BIN)/wmoe-bench --help

clean:
	rm -rf demo_out .pytest_cache build *.egg-info
