# medindex: every target sets up what it needs; a fresh clone needs only python3 (>= 3.10).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed first, alone: here it is the CPU build on disk, elsewhere the usual wheel.
# The project's own torch range admits it, so nothing bigger is downloaded after.
TORCH ?= torch==2.13.0

.PHONY: help install browser demo up page test test-unit test-integration test-system chaos cluster capacity bench bench-scale bench-formats bench-cpu bench-startup bench-audit lint format clean

help:
	@echo "make demo    sample data -> the whole pipeline on real processes -> seed searches, an audit"
	@echo "make test    unit + integration tests (real Redis, Celery workers, embedded Qdrant)"
	@echo "make test-system  kills, outages, fused passes, the drills and the bench, as tests"
	@echo "make up      the local stack in the foreground (Redis + workers)"
	@echo "make page    the local stack and the search page on http://127.0.0.1:8000/"
	@echo "make chaos   ingest while killing workers, the store worker and Redis; poisoned images"
	@echo "make cluster hosts as network namespaces over TCP; links cut, workers and broker killed (root)"
	@echo "make capacity the capacity model (docs/capacity.md) from measured inputs"
	@echo "make bench   pipeline vs the seed's loop vs the hardware's ceilings (BENCHMARKS.md)"
	@echo "make bench-scale the scale curve to POINTS (default 1,000,000): rate, RSS, latency, recall"
	@echo "make bench-formats per data format: images/s, reading+decoding vs embedding"
	@echo "make bench-cpu the CPU's ceilings side by side: one process of threads vs a process a core"
	@echo "make bench-startup  medindex --help and refused arguments, timed beside a bare interpreter"
	@echo "make bench-audit the audit's precision/recall on planted duplicates, per format and tier"
	@echo "make lint    ruff check + format check"
	@echo "make clean   remove the virtual environment and local state"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/medindex demo

up: install
	$(BIN)/medindex up

# The stack and the search page over whatever is indexed (after `make demo`: its collections).
page: install
	$(BIN)/medindex up --serve 8000

# Debian's chromium and its driver: Flower's dashboard headless, the search page's browser test
# (selenium drives /usr/bin/chromedriver; it never downloads a driver).
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Each tier in a pytest process of its own: unit tests see the caller's environment untouched.
test: test-unit test-integration

# Unit tests share nothing but the rendered samples: a process per core (up to four), each
# file in one of them; half the tier's time was waiting on subprocesses.
test-unit: install
	$(BIN)/pytest -n auto --maxprocesses 4 --dist loadfile tests/unit

test-integration: install browser
	$(BIN)/pytest tests/integration

test-system: install browser
	$(BIN)/pytest tests/system

chaos: install
	$(BIN)/python -m producers.drills.chaos --images 400 --kills 8

cluster: install
	$(BIN)/python -m producers.drills.cluster --images 400

capacity: install
	$(BIN)/python docs/capacity.py

bench: install
	$(BIN)/medindex bench

# One collection ingested to POINTS through the stack (trivial embedder), a line per 100,000.
POINTS ?= 1000000
bench-scale: install
	$(BIN)/medindex bench-scale --points $(POINTS) --json

# Per format (skin, X-ray, brain MRI, DICOM): pipeline images/s and read+decode vs embed time.
bench-formats: install
	$(BIN)/python docs/formats_bench.py

# The forward pass in one process of threads vs one single-thread process per core, with and
# without the embed step's reading and decoding (what (c)/(b) can reach on a CPU).
bench-cpu: install
	$(BIN)/python docs/cpu_ceiling.py

# How fast `medindex` answers: --help and refusals that need no broker, store or model.
bench-startup: install
	$(BIN)/python docs/startup.py
# The audit's tiers on planted duplicates and hard negatives; --model for real weights.
bench-audit: install
	$(BIN)/python docs/audit_quality.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .medindex .pytest_cache
