# Top-level entry points. Each target installs what it needs (scripts/install-deps.sh).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build model test test-python test-sanitizers test-fuzz demo bench eval fuzz install clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# The default model (SmolLM2-135M-Instruct) and the small Qwen2.5-Coder-0.5B
# that the tests also run, fetched once into ~/.cache/kvtc.
model: build
	@$(BUILD)/kvtc fetch >/dev/null
	@$(BUILD)/kvtc fetch qwen2.5-coder-0.5b >/dev/null

# The whole test suite: unit and integration tests, the Python package's
# tests, then the suite again under ASan+UBSan and the threaded tests under
# TSan, then each fuzz target briefly.
test: build model
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) --no-print-directory test-python test-sanitizers test-fuzz

# pip-installs the package (pyproject.toml) into a venv under $(BUILD), runs pytest.
test-python: build
	BUILD=$(BUILD) bash tests/python/run.sh

test-sanitizers: deps
	bash scripts/test-sanitizers.sh

FUZZ_SECONDS ?= 60
test-fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh

demo: build model
	bash scripts/demo.sh

bench: build model
	bash bench/run.sh

eval: build model
	MODEL="$(MODEL)" bash eval/run.sh

# Longer fuzzing than the test suite's (FUZZ_SECONDS per target).
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-600} bash fuzz/run.sh

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf $(BUILD) build-*
