# The two commands: `make demo` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_out

.PHONY: demo test bench bench-peers gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/neuralode demo --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Peers (JAX/diffrax, torchode) for bench_peers.py live in the `bench` extra, installed only here.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) benchmarks/constraints-bench.txt
	$(BIN)/pip install --quiet -c constraints.txt -c benchmarks/constraints-bench.txt -e '.[bench]'
	touch $(BENCH_STAMP)

bench-peers: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_peers.py

# Skips with a message where there is no CUDA device.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
