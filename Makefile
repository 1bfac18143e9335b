# Front door: `make run` and `make test` install what is missing, build, and go.
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
CUDA_BUILD ?= build-cuda
STARPU_CUDA ?= $(BUILD)/starpu-cuda
FUZZ_SECONDS ?= 60
JOBS ?= $(shell nproc)

.PHONY: all deps build run test test-cuda asan fuzz clean install

all: build

deps:
	@scripts/install-deps

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	BUILD=$(BUILD) scripts/run-default

# The suite replays every fuzz seed and regression (fuzz_replay_* tests); under
# CI (CI=true, as CI services set it) it then fuzzes each target for
# FUZZ_SECONDS too, and runs test-cuda.
test: build
	cd $(BUILD) && ctest --output-on-failure -j 2
	@if [ "$${CI:-}" = true ]; then $(MAKE) --no-print-directory fuzz test-cuda; fi

# The suite on the CPU workers of a StarPU with CUDA: scripts/device-check --prepare builds
# that StarPU (once: it stays in $(STARPU_CUDA)) and eellm against it in $(CUDA_BUILD), and
# gathers what a GPU machine needs, which the suite's device_check dry-runs.
test-cuda: deps
	@if ! command -v nvcc > /dev/null; then echo "test-cuda: skipped: no nvcc (CUDA toolkit)"; exit 0; fi; \
	set -e; STARPU_CUDA_PREFIX=$(STARPU_CUDA) CUDA_BUILD=$(CUDA_BUILD) scripts/device-check --prepare; \
	cmake --build $(CUDA_BUILD) -j $(JOBS); \
	cd $(CUDA_BUILD) && ctest --output-on-failure -j 2

# Each libFuzzer target (tests/fuzz/) for FUZZ_SECONDS, in $(FUZZ_BUILD) (clang).
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_BUILD=$(FUZZ_BUILD) JOBS=$(JOBS) scripts/fuzz

asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DEELLM_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	# hwloc's plugins and Open MPI's components are unloaded before LeakSanitizer
	# runs, so their leaks have no module to suppress by: keep hwloc's out (tests
	# do not need them) and Open MPI's loaded, and unwind slowly so that stacks
	# reach the library frames the suppressions name. A suppressed leak must not print
	# LeakSanitizer's table of suppressions either: tests hold error output to one line.
	cd $(ASAN_BUILD) && HWLOC_PLUGINS_PATH=/nonexistent OMPI_MCA_mca_base_component_disable_dlclose=1 \
	  PMIX_MCA_mca_base_component_disable_dlclose=1 \
	  ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 ctest --output-on-failure

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(CUDA_BUILD)
