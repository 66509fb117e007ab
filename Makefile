# Everything the project needs is installed by these targets into .venv (Python 3.10+ and pip).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,e5]"
	touch $(STAMP)

install: $(STAMP)

# The main job: index the shipped multilingual corpus and show similar items.
demo: install
	$(BIN)/python -m lookalike.demo

# The default suite (slow suites excluded). pytest exits 5 when it collected no tests: fail then.
test: install
	@$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-all: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/python -m ruff check src tests bench
