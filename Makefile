# Front door: `make run` and `make test` install what is missing, build, and go.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: all deps build run test asan clean install

all: build

deps:
	@scripts/install-deps

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	BUILD=$(BUILD) scripts/run-default

test: build
	cd $(BUILD) && ctest --output-on-failure -j 2

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
	rm -rf $(BUILD) $(ASAN_BUILD)
