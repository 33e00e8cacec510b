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
# Peers the benchmark times beside lsq_fast (setup.py's `peers` extra), on the same pip line as
# the torch pin so that they can never pull another torch.
PEERS_SPEC ?= torchao==0.18.0 brevitas==0.13.4 nncf==3.4.0
# The benchmarks' charts and progress bars (setup.py's `bench` extra).
BENCH_SPEC ?= matplotlib tqdm
# lsq_fast.export_onnx's dependencies (setup.py's `export` extra), for its tests in onnxruntime.
EXPORT_SPEC ?= onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0
# examples/qat_digits.py (setup.py's `examples` extra): the digits ship inside scikit-learn.
EXAMPLES_SPEC ?= scikit-learn matplotlib
SOURCES := setup.py pyproject.toml Makefile $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*)
INSTALLED := $(VENV)/.lsq_fast-installed
JOBS ?= 2

# The CUDA-build leg of CI, no GPU needed: torch's CUDA build in a venv of its own; lsq_fast built
# from a copy of the tree with its CUDA kernels, by the machine's nvcc (found through its wrapper:
# no CUDA_HOME) for setup.py's default architectures; then, against the installed package, the
# kernel registrations (tests/test_build.py) and the CPU and Triton-interpreter contract suite on
# that torch and the Triton it brings, and FSDP2 (tests/test_fsdp.py: its internals move between torch releases).
CUDA_VENV ?= .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_SRC := build-cuda/src
CUDA_TESTS ?= test_build.py test_ops_lsq.py test_ops_lsq_plus.py test_ops_qil.py test_op_registration.py test_errors.py test_triton_symbolic.py test_fsdp.py

.PHONY: help install test bench bench-pytest ctest check-cuda-build clean

help:
	@echo "make test    set up $(VENV), build lsq_fast, run the test suite"
	@echo "make bench   set up $(VENV), build lsq_fast, run the main benchmark (kernels, ResNet-18 QAT step)"
	@echo "             BENCH_ARGS='--gpu' for the GPU-sized run; results in benchmarks/results/local/"
	@echo "make bench-pytest  the kernel benchmark as a pytest-benchmark suite"
	@echo "make ctest   build the C++ library with CMake and run its C++ test"
	@echo "make check-cuda-build  build with the CUDA kernels against $(CUDA_TORCH_SPEC) (CUDA build) in $(CUDA_VENV), test it"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Dependencies first (torch pinned), then lsq_fast itself against that torch.
$(INSTALLED): $(PY) $(SOURCES)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" "$(TRITON_SPEC)" "$(NUMPY_SPEC)" $(PEERS_SPEC) $(BENCH_SPEC) $(EXPORT_SPEC) $(EXAMPLES_SPEC) ninja "pytest>=8" "pytest-benchmark>=4"
	MAX_JOBS=$(JOBS) $(PY) -m pip install --quiet --no-build-isolation --no-deps -e ".[test,bench,peers,export,examples]"
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

$(CUDA_PY):
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install --quiet --upgrade pip setuptools wheel

check-cuda-build: $(CUDA_PY)
	$(CUDA_PY) -m pip install --quiet "$(CUDA_TORCH_SPEC)" ninja "pytest>=8" numpy
	rm -rf build-cuda && mkdir -p $(CUDA_SRC)
	git ls-files -z --cached --others --exclude-standard | tar -c --null --ignore-failed-read -T - | tar -x -C $(CUDA_SRC)
	cd $(CUDA_SRC) && env -u CUDA_HOME -u CUDA_PATH -u TORCH_CUDA_ARCH_LIST MAX_JOBS=$(JOBS) \
		$(abspath $(CUDA_PY)) -m pip install --quiet --no-build-isolation --no-deps --force-reinstall .
	cd tests && LSQ_FAST_EXPECT_CUDA=1 $(abspath $(CUDA_PY)) -m pytest -q -p no:cacheprovider $(CUDA_TESTS)

clean:
	rm -rf build build-cmake build-cuda *.egg-info lsq_fast/*.so
