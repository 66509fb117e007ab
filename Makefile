# Everything the project needs is installed by these targets into .venv (Python 3.10+ and pip).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unpatched test-all lint bench bench-quick bench-venvs bench-corpus browser

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,e5]"
	touch $(STAMP)

install: $(STAMP)

# The main job: index the shipped multilingual corpus and show similar items.
demo: install
	$(BIN)/python -m lookalike.quality.demo

# pytest exits 5 when it collected no tests: fail then.
PYTEST := $(BIN)/python -m pytest
define fail_if_empty
rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; [ $$rc -eq 0 ] || exit $$rc
endef

# The default suite (slow suites excluded) with the engine patches, then the core suite without them.
test: install
	@LOOKALIKE_LITE_PATCHES=1 $(PYTEST) -m "not slow" $(PYTEST_ARGS); $(fail_if_empty)
	@$(MAKE) --no-print-directory test-unpatched

# The core suite on Milvus Lite as released (LOOKALIKE_LITE_PATCHES=0): no patch may be the only thing
# that makes a behaviour correct. The server leg is left to the default suite (the patches are Lite's).
test-unpatched: install
	@LOOKALIKE_LITE_PATCHES=0 $(PYTEST) -m "core and not server and not slow" -q; $(fail_if_empty)

test-all: install
	@LOOKALIKE_LITE_PATCHES=1 $(PYTEST) $(PYTEST_ARGS); $(fail_if_empty)
	@$(MAKE) --no-print-directory test-unpatched

# Debian's headless Chromium and its driver for tests/test_explorer.py (the explorer page); root's
# apt-get, once. Without apt (another system) it says so and the browser test skips.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo "make browser: apt-get could not install chromium chromium-driver; the browser test will fail under LOOKALIKE_REQUIRE_BROWSER=1" >&2; \
	else echo "make browser: no apt-get here: install Chromium and chromedriver yourself (the browser test skips without them)" >&2; fi

lint: install
	$(BIN)/python -m ruff check src tests bench

# Benchmarks (bench/README.md). The peers get venvs of their own, never .venv.
BENCH_PEERS := chromadb==1.5.9 qdrant-client==1.20.0 lancedb==0.40.0 faiss-cpu==1.15.1 matplotlib==3.11.2 psutil numpy
LITE25 := "setuptools<70" pymilvus==2.5.18 milvus-lite==2.5.1 psutil numpy

.venv-bench/.installed:
	$(PY) -m venv .venv-bench
	.venv-bench/bin/pip install -q $(BENCH_PEERS)
	touch $@

.venv-lite25/.installed:
	$(PY) -m venv .venv-lite25
	.venv-lite25/bin/pip install -q $(LITE25)
	touch $@

bench-venvs: .venv-bench/.installed .venv-lite25/.installed

# The whole DDTP corpus for `bench/run.py --sizes ddtp-50k,ddtp-all` (apt's translation lists: network once).
bench-corpus: install
	$(BIN)/python -m lookalike.quality.corpus fetch
	$(BIN)/python -m lookalike.quality.corpus build --full --out bench/.cache/ddtp-full.jsonl.gz

# Every system side by side at 10k, 100k and on the shipped corpus (22 min on 2 cores in the last run); results in bench/results/
bench: install bench-venvs
	$(BIN)/python bench/run.py

# lookalike, raw pymilvus and numpy at 10k (~1 min): what tests/test_bench_quick.py runs.
bench-quick: install
	$(BIN)/python bench/run.py --quick --out bench/results/quick
