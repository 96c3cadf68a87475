# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test check test-slow crash bench lint clean chromium

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/jade serve

# The web console's end-to-end test drives Debian's chromium (never a downloaded browser).
CHROMIUM := $(shell command -v chromium 2>/dev/null)

chromium:
ifeq ($(CHROMIUM),)
	-(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
		echo "chromium could not be installed: the web console test will be skipped"
endif

test: $(STAMP) chromium
	$(BIN)/python -m pytest -n 2 -m "not slow" -q

# Lint and type-check (settings in pyproject.toml); CI runs it before the tests.
check: $(STAMP)
	$(BIN)/ruff check wal jade replica tools
	$(BIN)/mypy wal jade replica tools

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

crash: $(STAMP)
	$(BIN)/python -m pytest -m crash -q

bench: $(STAMP)
	$(BIN)/python bench/ingest_search.py --quick
	$(BIN)/python bench/restart.py --quick
	$(BIN)/python bench/permission_check.py
	$(BIN)/python bench/replication.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
