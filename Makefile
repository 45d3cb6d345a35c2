# The two commands users need: `make run` and `make test`. Everything else is a step of those.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test run bench-collectives sanitize clean format

all: build

deps:
	./scripts/install-deps.sh

configure:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: deps build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 600

# The main job: the tiny GPT trained with MiCS (p = 2) on 4 ranks as 2 emulated nodes, on the
# embedded synthetic corpus (scripts/main-job.sh says more).
run: deps build
	./scripts/main-job.sh $(BUILD_DIR)/mics

# ASan+UBSan build of the whole test suite (TSan: make sanitize SANITIZER=thread). Without the
# CUDA parts: the GPU runtimes are not instrumented and their exit handlers trip TSan. One
# OpenMP thread: libgomp is not instrumented either, so TSan cannot see its barriers.
SANITIZER ?= address,undefined
sanitize: deps
	cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMICS_WITH_CUDA=OFF -DMICS_SANITIZE=$(SANITIZER)
	cmake --build build-san -j $(JOBS)
	cd build-san && TSAN_OPTIONS=suppressions=$(CURDIR)/tests/tsan.supp OMP_NUM_THREADS=1 \
	  ctest --output-on-failure -j $(JOBS) --timeout 900

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD_DIR) build-san
