# Quick start: `make bench` or `make test` on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned: the local CPU wheel. An unpinned torch would pull the registry's CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Triton as on the GPU image, for its CPU interpreter (TRITON_INTERPRET=1) in the tests. Its
# interpreter turns 1-element arrays into ints, which NumPy 2.4 refuses: hence numpy<2.4.
TRITON_SPEC ?= triton==3.6.0
NUMPY_SPEC ?= numpy<2.4
SOURCES := setup.py pyproject.toml Makefile $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*)
INSTALLED := $(VENV)/.lsq_fast-installed
JOBS ?= 2

.PHONY: help install test bench bench-pytest ctest clean

help:
	@echo "make test    set up $(VENV), build lsq_fast, run the test suite"
	@echo "make bench   set up $(VENV), build lsq_fast, run the main benchmark (kernels, ResNet-18 QAT step)"
	@echo "             BENCH_ARGS='--gpu' for the GPU-sized run; results in benchmarks/results/local/"
	@echo "make bench-pytest  the kernel benchmark as a pytest-benchmark suite"
	@echo "make ctest   build the C++ library with CMake and run its C++ test"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Dependencies first (torch pinned), then lsq_fast itself against that torch.
$(INSTALLED): $(PY) $(SOURCES)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" "$(TRITON_SPEC)" "$(NUMPY_SPEC)" ninja "pytest>=8" "pytest-benchmark>=4"
	MAX_JOBS=$(JOBS) $(PY) -m pip install --quiet --no-build-isolation --no-deps -e ".[test,bench]"
	@touch $@

install: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q

bench: $(INSTALLED)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

bench-pytest: $(INSTALLED)
	$(PY) -m pytest benchmarks/test_kernels_benchmark.py --benchmark-only $(PYTEST_ARGS)

ctest: $(INSTALLED)
	cmake -S . -B build-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
	cmake --build build-cmake -j $(JOBS)
	cd build-cmake && ctest --output-on-failure

clean:
	rm -rf build build-cmake *.egg-info lsq_fast/*.so
