# Front door: `make run` and `make test` install what is missing, build, and go.
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
JOBS ?= $(shell nproc)

.PHONY: all deps build run test asan fuzz clean install

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
# FUZZ_SECONDS too.
test: build
	cd $(BUILD) && ctest --output-on-failure -j 2
	@if [ "$${CI:-}" = true ]; then $(MAKE) --no-print-directory fuzz; fi

# Each libFuzzer target (tests/fuzz/) for FUZZ_SECONDS, in $(FUZZ_BUILD) (clang).
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_BUILD=$(FUZZ_BUILD) JOBS=$(JOBS) scripts/fuzz

asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DEELLM_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	# hwloc's plugins and Open MPI's components are unloaded before LeakSanitizer
	# runs, so their leaks have no module to suppress by: keep hwloc's out (tests
	# do not need them) and Open MPI's loaded, and unwind slowly so that stacks
	# reach the library frames the suppressions name.
	cd $(ASAN_BUILD) && HWLOC_PLUGINS_PATH=/nonexistent OMPI_MCA_mca_base_component_disable_dlclose=1 \
	  PMIX_MCA_mca_base_component_disable_dlclose=1 \
	  ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp ctest --output-on-failure

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
