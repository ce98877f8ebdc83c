# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

# torch is pinned to the CPU build that this toolchain is developed and tested on;
# a looser requirement would pull a multi-GB CUDA build. coremltools 9 needs numpy<2.4.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" "numpy<2.4"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeprune build targets/digits-host.toml -o out/digits-host

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check edgeprune tests examples benchmarks

clean:
	rm -rf out .pytest_cache
