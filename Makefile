# wmoe: set-up-and-run targets. Everything installs into ./.venv on first use (a fresh machine needs only python3).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wmoe-installed
# torch/torchvision pinned to the builds this project is tested with (library code also runs on torch 2.11).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The Triton Inference Server tests: a small Python 3.12 env holding the real `tritonserver` that the nvidia-pytriton
# wheel bundles (its Python-backend stub needs 3.12) and wmoe[runtime] (torch-free: the Python-backend model). Without a Python 3.12 built
# with a shared libpython (pyenv's, or python3.12 on PATH) those tests skip and say why.
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.wmoe-installed
PYTHON312    ?= $(shell for c in $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 $$(command -v python3.12); do \
  "$$c" -c 'import sys, sysconfig; assert sys.version_info[:2] == (3, 12) and sysconfig.get_config_var("Py_ENABLE_SHARED")' \
  2>/dev/null && echo "$$c" && break; done)
TRITON_PINS  ?= nvidia-pytriton==0.7.0

.PHONY: install triton-env demo test test-fast bench-cpu gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PINS)
	# more tensorrt.plugin frontends for tests/test_trt_frontend.py: 10.9 (first with aot_impl), 11.4 (newest)
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trt-frontends/10.9 tensorrt-cu12-bindings==10.9.0.34
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trt-frontends/11.4 tensorrt-cu12-bindings==11.4.0.106
	# TensorRT's published API for the generated test double and the type check (tests/trt_double.py): --no-deps and
	# beside site-packages, because the wheel requires the `tensorrt` placeholder (downloads from pypi.nvidia.com)
	# and its tensorrt/__init__.pyi in site-packages would make `import tensorrt` an empty namespace package
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trt-stubs/10.13 tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

install: $(STAMP)

$(TRITON_STAMP): pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "triton-env: no Python 3.12 interpreter (python3.12 or pyenv): the Triton server tests will skip"; \
	else \
	  set -e; $(PYTHON312) -m venv $(TRITON_VENV); \
	  $(TRITON_VENV)/bin/python -m pip install -q --upgrade pip; \
	  $(TRITON_VENV)/bin/python -m pip install -q $(TRITON_PINS) -e ".[runtime]"; \
	  touch $(TRITON_STAMP); \
	fi

triton-env: $(TRITON_STAMP)

## The main job: demo data -> short training -> zero-shot evaluation -> predictions -> report (CPU, a few minutes).
demo: install
	$(BIN)/wmoe demo --out demo_out

## The test suite (CPU; Triton kernels run under the interpreter).
test: install triton-env
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --timeout 900 $(PYTEST_ARGS)

bench-cpu: install
	$(BIN)/wmoe-bench --help

## GPU acceptance run on a machine with an NVIDIA GPU (no arguments, nothing downloaded): GPU tests, kernel bench,
## wmoe bench at 336/518 px, AOTInductor and TensorRT builds; writes bench/results/<gpu-name>/. Without a GPU the
## GPU steps are listed as skipped and it exits 2 (`python -m wmoe.bench.gpu_check --plan` lists the steps).
## Interpreter: GPU_PYTHON if given; else, when there is no .venv yet and python3 already has a CUDA torch (a lent
## GPU machine without network), python3 with this checkout on its path through build/gpu-path (links, no install);
## else the .venv (installed like `make test`). The env step lists any of wmoe's modules that interpreter lacks.
GPU_PYTHON ?=
gpu-check:
	@set -e; py="$(GPU_PYTHON)"; \
	if [ -z "$$py" ] && [ ! -f $(STAMP) ] && python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then \
	  py=python3; fi; \
	if [ -z "$$py" ]; then $(MAKE) install; py=$(BIN)/python; fi; \
	if ! $$py -c 'import wmoe.kernels, wmoe.export, wmoe.bench' 2>/dev/null; then \
	  rm -rf build/gpu-path; mkdir -p build/gpu-path/wmoe; \
	  for f in wmoe/*; do ln -s "$(CURDIR)/$$f" build/gpu-path/wmoe/; done; \
	  ln -s "$(CURDIR)/kernels" build/gpu-path/wmoe/kernels; ln -s "$(CURDIR)/export" build/gpu-path/wmoe/export; \
	  ln -s "$(CURDIR)/bench" build/gpu-path/wmoe/bench; \
	  export PYTHONPATH="$(CURDIR)/build/gpu-path$${PYTHONPATH:+:$$PYTHONPATH}"; \
	  echo "gpu-check: $$py runs this checkout through build/gpu-path (PYTHONPATH)"; fi; \
	$$py -m wmoe.bench.gpu_check

clean:
	rm -rf demo_out .pytest_cache build *.egg-info $(TRITON_VENV)
