# The two commands: `make demo` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_out

.PHONY: demo test lint format typecheck docs docs-strict docs-figures docs-check dist bench bench-peers gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/neuralode demo --out $(OUT)

# The checks run cheapest first, each stopping `make test` with the command that fixes or explains it.
# pytest runs in TEST_WORKERS processes (pytest-xdist), each test going to whichever worker is free: two, one per
# core of the project's machines (`make test TEST_WORKERS=0` runs them in pytest's own process, without workers).
TEST_WORKERS ?= 2

test: lint typecheck docs-strict
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=15

LINT_PATHS := src tests benchmarks examples docs

lint: $(STAMP)
	@$(BIN)/ruff check $(LINT_PATHS) || { echo "make test: lint errors above; '$(BIN)/ruff check --fix $(LINT_PATHS)' fixes those marked [*]"; exit 1; }
	@$(BIN)/ruff format --check $(LINT_PATHS) || { echo "make test: files above are not formatted; run 'make format'"; exit 1; }

format: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

typecheck: $(STAMP)
	@$(BIN)/mypy || { echo "make test: type errors above (mypy over src/, settings in pyproject.toml)"; exit 1; }

# The documentation site, built into site/; `make docs-strict` turns every warning (a reference to
# a renamed function, a missing page or snippet) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build

docs-strict: $(STAMP)
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict || { echo "make test: the documentation build failed on the warnings above"; exit 1; }

# Re-runs every example on its stated budget and copies its figure into docs/figures/ (minutes).
docs-figures: $(STAMP)
	$(BIN)/python docs/make_figures.py

# Screenshots the built site in headless Chromium (Debian: apt-get install chromium) and checks
# its links and images; not part of `make test`.
docs-check: docs
	$(BIN)/python docs/check_site.py

# The wheel and sdist in dist/, checked by twine.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/twine check --strict dist/*

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
	rm -rf $(VENV) $(OUT) .pytest_cache site dist build
