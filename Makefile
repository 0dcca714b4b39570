# Every target installs what it needs into $(VENV) by itself.
#   make install                      CPU variant (torch 2.13.0+cpu, fbgemm-gpu-cpu)
#   make install CUDA=cu128           CUDA variant (torch 2.13.0+cu128, fbgemm-gpu 1.8.0+cu128)
#   make install EXTRAS="llm serve"   plus pinned extras (requirements/extra-*.txt: llm index serve)
#   make install TORCH_INDEX=URL      where torch/fbgemm come from when pip's sources lack them
# See docs/install.md.
PYTHON ?= python3
VENV ?= .venv
CUDA ?=
EXTRAS ?=
TORCH_INDEX ?=
VARIANT := $(if $(strip $(CUDA)),$(strip $(CUDA)),cpu)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recis-installed-$(VARIANT)
CORE := $(VENV)/.recis-core-$(VARIANT)
NATIVE := ops/_native/.built
comma := ,
EXTRA_STAMPS := $(foreach e,$(subst $(comma), ,$(EXTRAS)),$(VENV)/.recis-extra-$(e)-$(VARIANT))
export TORCH_INDEX

.PHONY: install demo test test-gpu lint format clean horovod native check-install doctor

install: $(STAMP) $(NATIVE) $(EXTRA_STAMPS)

# the pinned stack of the variant and recis (enough for one process and for `make demo`)
$(CORE): pyproject.toml requirements/stack.txt requirements/$(VARIANT).txt scripts/install_stack.sh Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	scripts/install_stack.sh $(PY) $(VARIANT)
	rm -f $(VENV)/.recis-core-* $(VENV)/.recis-installed-*
	touch $(CORE)

# the C++ ops (ops/csrc), compiled in place into ops/_native by recis.ops.build: training
# processes only load them. Rebuilt when a source, the build code or the stack changes.
$(NATIVE): $(CORE) ops/build.py $(wildcard ops/csrc/*.cpp ops/csrc/*.h)
	$(PY) -m recis.ops.build
	touch $(NATIVE)

native: $(CORE)
	$(PY) -m recis.ops.build
	touch $(NATIVE)

# one pinned extra, installed under the variant's constraints (torch and transformers stay)
$(VENV)/.recis-extra-%-$(VARIANT): requirements/extra-%.txt $(CORE)
	scripts/install_stack.sh $(PY) $(VARIANT) extra $*
	touch $@

# everything, Horovod included (the test suite runs real horovodrun jobs)
$(STAMP): $(CORE) scripts/build_horovod.sh
	$(MAKE) --no-print-directory horovod
	touch $(STAMP)

# Horovod 0.28.1 built from source against torch 2.13 (C++17 patch, Gloo only); the wheel is
# cached in $(HOROVOD_CACHE), so only the first install on a machine compiles it (about 6 min
# on 2 idle cores by STACK-NOTES; 16 min measured on a busy shared one). One cache per variant.
HOROVOD_CACHE ?= $(HOME)/.cache/recis/wheels$(if $(strip $(CUDA)),/$(VARIANT))
horovod: $(CORE)
	RECIS_WHEEL_CACHE=$(HOROVOD_CACHE) RECIS_CONSTRAINTS=requirements/$(VARIANT).txt \
		scripts/build_horovod.sh $(PY)

# the demo's run dir is its own: a second `make demo` replaces the first run (--overwrite)
demo: $(CORE) $(NATIVE)
	$(VENV)/bin/recis train examples/dlrm_synthetic.yaml --overwrite

# the suite covers the optional parts too (LLM/RL on trl, faiss index, ONNX and serving)
TEST_EXTRA_STAMPS := $(foreach e,llm index serve,$(VENV)/.recis-extra-$(e)-$(VARIANT))

test: $(STAMP) $(NATIVE) $(TEST_EXTRA_STAMPS)
	$(PY) -m pytest -q tests

# the CUDA path end to end (skips without a CUDA device)
test-gpu: $(CORE) $(NATIVE)
	$(PY) -m pytest -q -m gpu tests/test_gpu.py

# resolve every variant's requirements with a clean pip (no machine configuration)
check-install: $(CORE)
	$(PY) -m pytest -q tests/test_install.py

doctor: $(CORE)
	$(VENV)/bin/recis doctor

# ruff, then mypy over the installed package shape (scripts/typecheck.py: recis.io, .ops, .models)
lint: $(CORE)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) scripts/typecheck.py

format: $(CORE)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs build *.egg-info ops/_native
