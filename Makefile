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

.PHONY: install triton-env mosquitto browser demo test test-fast bench-cpu gpu-check wheelhouse clean

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

## The main job: demo data -> short training -> zero-shot evaluation -> predictions -> report (CPU, a few minutes);
## it ends by printing the command that opens the app (wmoe app) on the demo model.
demo: install
	$(BIN)/wmoe demo --out demo_out

## The MQTT tests start a real broker (Debian's mosquitto) on a free 127.0.0.1 port with their own config file.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing the Debian package mosquitto (the MQTT tests' broker)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto openssl >/dev/null; \
	fi

## The app's browser test drives Debian's chromium through its chromedriver (Selenium, no browser download). If
## they cannot be installed (not root, no apt), the test is skipped and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing the Debian packages chromium and chromium-driver (the app's browser test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null; } || echo "could not install chromium: the browser test will be skipped"; \
	fi

## The test suite (CPU; Triton kernels run under the interpreter). --max-worker-restart=0: a worker that dies (out of
## memory, a crash in native code) fails the run at once and xdist names the test (tests/conftest.py adds the memory
## state); replacing it instead hangs xdist 3.8 under --dist loadgroup until CI's limit (pytest-xdist#1323/#1378).
test: install triton-env mosquitto browser
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --max-worker-restart=0 --timeout 900 $(PYTEST_ARGS)

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

## An air-gapped line PC: wmoe's wheel and every wheel of wmoe[$(WHEEL_EXTRAS)] for the line PC's platform and
## Python (binary wheels only), into ./$(WHEELHOUSE); install there with the command in $(WHEELHOUSE)/INSTALL.txt.
## e.g. make wheelhouse WHEEL_PLATFORM=manylinux_2_28_aarch64 WHEEL_PYTHON=3.10   (default: this machine, 3.11)
WHEELHOUSE     ?= wheelhouse
WHEEL_EXTRAS   ?= runtime,camera,mqtt
WHEEL_PLATFORM ?=
WHEEL_PYTHON   ?= 3.11
wheelhouse:
	@py=$(BIN)/python; [ -x $$py ] || py=$(PYTHON); \
	$$py -m wmoe.wheelhouse --out $(WHEELHOUSE) --extras $(WHEEL_EXTRAS) --python-version $(WHEEL_PYTHON) \
	  $(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM))

clean:
	rm -rf demo_out .pytest_cache build *.egg-info $(TRITON_VENV) $(WHEELHOUSE)
