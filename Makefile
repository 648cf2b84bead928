# The README's two commands: `make train` (the main job) and `make test`.
# `make test PYTEST_ARGS=...` passes options to pytest (.ci/run adds a JUnit report).
PY_SYS ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= /usr/share/datasets/fashion-mnist
OUT    ?= out

.PHONY: setup data train test kernels bench gpu-check clean

$(VENV)/.installed: setup.py
	@$(PY_SYS) -c "import ensurepip" 2>/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq python3-venv; } || \
	  { echo "python3 cannot create a venv: install python3-venv (Debian/Ubuntu)"; exit 1; }
	$(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian's dataset-fashion-mnist (needs root; otherwise
# `gpucnn train` falls back to scikit-learn's bundled 8x8 digits and says so).
data:
	@if [ ! -d $(DATA) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "could not install dataset-fashion-mnist"; \
	  else echo "Fashion-MNIST not found at $(DATA); install dataset-fashion-mnist or pass --data-dir"; fi; fi

train: setup data
	$(VENV)/bin/gpucnn train --metrics-out $(OUT)/metrics.json --plot $(OUT)/curves.png --checkpoint $(OUT)/model.ckpt.npz

test: setup data
	$(PY) -m pytest -q $(PYTEST_ARGS)

kernels:  ## nvcc resource report (registers, shared memory, spills) for sm_90
	$(PY) -m gpucnn.devtools.kernel_check --arch sm_90

bench: setup
	$(VENV)/bin/gpucnn bench --suite quick --json $(OUT)/bench.json

gpu-check: setup  ## on a GPU machine: make gpu-check OUT=dir DATA=path
	$(PY) -m gpucnn.devtools.gpu_check --out $(OUT) --data-dir $(DATA)

clean:
	rm -rf build dist *.egg-info $(OUT)
