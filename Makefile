# spindoctor_torch: two commands do everything on a fresh machine:
#   make demo   (creates .venv, installs, runs the headline job, writes demo_output/)
#   make test   (the fast test suite, < 10 min on 2 cores)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# 2-core machines: threaded BLAS/OpenMP oversubscription slows sparse factorizations up to 100x.
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# Headless PyVista/VTK rendering (Mesa EGL, no X server needed).
export VTK_DEFAULT_OPENGL_WINDOW ?= vtkEGLRenderWindow
export PYVISTA_OFF_SCREEN ?= true

.PHONY: install demo test test-slow bench lint validate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A CPU wheel of torch 2.13.0 lies on disk here; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) examples/demo.py --output demo_output

test: install
	$(PY) -m pytest -m "not slow" -q --timeout=900

test-slow: install
	$(PY) -m pytest -m slow -q --timeout=3600

validate: install
	$(VENV)/bin/spindoctor-torch validate --quick

bench: install
	$(PY) benchmarks/run_all.py

lint: install
	$(VENV)/bin/ruff check spindoctor_torch tests examples benchmarks
	$(VENV)/bin/ruff format --check spindoctor_torch tests examples benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
