# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# timm needs torchvision, and the only torchvision wheel for torch 2.13.0 is a CUDA build
# whose extension does not load beside the CPU torch: the timm:/torchvision: tests run in an
# environment of their own, on torch 2.14.1 + torchvision 0.29.1 (a CUDA build, run on the CPU).
VISION := .venv-vision
VISION_STAMP := $(VISION)/.installed
LLM    := .venv-llm
LLM_STAMP := $(LLM)/.installed

.PHONY: demo test test-vision lint bench bench-llm-env clean

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

$(VISION_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VISION)
	$(VISION)/bin/python -m pip install -q --upgrade pip
	$(VISION)/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "timm>=1" "numpy<2.4"
	$(VISION)/bin/python -m pip install -q -e ".[dev]"
	touch $(VISION_STAMP)

# Two tests at a time (pytest-xdist; the tests of one file in one worker, which keeps its fixtures
# to itself), each worker with one torch thread: the suite is mostly single-threaded Python, and two
# workers with torch's own two threads each would only contend for the two cores.
PARALLEL := OMP_NUM_THREADS=1
test: $(STAMP) test-vision
	$(PARALLEL) $(PY) -m pytest tests -n 2 --dist loadfile --durations=10

# the model-argument tests that need timm and torchvision; there they must run, not skip
test-vision: $(VISION_STAMP)
	EDGEPRUNE_VISION_TESTS=1 $(PARALLEL) $(VISION)/bin/python -m pytest -n 2 tests/test_model_specs.py \
		'tests/test_zoo.py::test_a_library_model_prunes_to_its_full_width'

# The LLM decoding comparison (benchmarks/llm_decode.py): llama.cpp through llama-cpp-python,
# compiled here for this CPU (-DGGML_NATIVE=ON: about 20 minutes on 2 cores), ONNX Runtime
# GenAI and its model builder, and edgeprune itself. Never part of `make test`. Made once: it
# does not follow pyproject.toml (that would recompile llama.cpp); `rm -r .venv-llm` remakes it.
bench-llm-env: $(LLM_STAMP)

$(LLM_STAMP):
	$(PYTHON) -m venv $(LLM)
	$(LLM)/bin/python -m pip install -q --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(LLM)/bin/python -m pip install "llama-cpp-python==0.3.36"
	$(LLM)/bin/python -m pip install -q "torch==2.13.0" "numpy<2.4"
	$(LLM)/bin/python -m pip install -q -e ".[dev]"
	$(LLM)/bin/python -m pip install -q onnxruntime-genai onnx-ir sentencepiece
	touch $(LLM_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check edgeprune tests examples benchmarks

clean:
	rm -rf out .pytest_cache
