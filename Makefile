# Every target installs what it needs into .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.recis-installed
CORE := $(VENV)/.recis-core-installed
CONSTRAINTS := -c requirements/constraints.txt
NATIVE := ops/_native/.built

.PHONY: install demo test lint format clean horovod native

install: $(STAMP) $(NATIVE)

# the pinned stack and recis (enough for training on one process and for `make demo`)
$(CORE): pyproject.toml requirements/stack.txt requirements/constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=75" wheel
	$(PIP) install -q torch==2.13.0 fbgemm-gpu-cpu==1.8.0 $(CONSTRAINTS)
	$(PIP) install -q --no-deps torchrec==1.9.2
	$(PIP) install -q -r requirements/stack.txt $(CONSTRAINTS)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(CORE)

# the C++ ops (ops/csrc), compiled in place into ops/_native by recis.ops.build: training
# processes only load them. Rebuilt when a source, the build code or the stack changes.
$(NATIVE): $(CORE) ops/build.py $(wildcard ops/csrc/*.cpp)
	$(PY) -m recis.ops.build
	touch $(NATIVE)

native:
	$(PY) -m recis.ops.build
	touch $(NATIVE)

# everything, Horovod included (the test suite runs real horovodrun jobs)
$(STAMP): $(CORE) scripts/build_horovod.sh
	$(MAKE) --no-print-directory horovod
	touch $(STAMP)

# Horovod 0.28.1 built from source against torch 2.13 (C++17 patch, Gloo only); the wheel is
# cached in $(HOROVOD_CACHE), so only the first install on a machine compiles it (about 6 min
# on 2 idle cores by STACK-NOTES; 16 min measured on a busy shared one).
HOROVOD_CACHE ?= $(HOME)/.cache/recis/wheels
horovod: $(CORE)
	RECIS_WHEEL_CACHE=$(HOROVOD_CACHE) scripts/build_horovod.sh $(PY)

demo: $(CORE) $(NATIVE)
	$(VENV)/bin/recis train examples/dlrm_synthetic.yaml

test: $(STAMP) $(NATIVE)
	$(PY) -m pytest -q tests

lint: $(CORE)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(CORE)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs build *.egg-info ops/_native
