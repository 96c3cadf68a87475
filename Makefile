# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What is installed: the server's dependencies only (`make serve`), or with the test and lint
# tools as well (every other target). `make test` after `make serve` adds the test extras.
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed-test

.PHONY: serve test check test-slow crash bench lint clean chromium etcd

# $(1): what to install ('.' or '.[test]'), editable. Before issue 18 this tree was installed
# under the original client's name "jadevectordb": that install of this tree is removed first
# (its files would otherwise linger beside jadevectordb-server's, the `jade` script among them).
define install
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if $(BIN)/pip show jadevectordb 2>/dev/null | grep -qx 'Editable project location: $(CURDIR)'; \
		then $(BIN)/pip uninstall -q -y jadevectordb; fi
	rm -rf jadevectordb.egg-info
	$(BIN)/pip install -q -e '$(1)' --config-settings editable_mode=compat
endef

$(SERVE_STAMP): pyproject.toml
	$(call install,.)
	touch $(SERVE_STAMP)

$(STAMP): pyproject.toml
	$(call install,.[test])
	touch $(STAMP) $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/jade serve

# The web console's end-to-end test drives Debian's chromium (never a downloaded browser).
CHROMIUM := $(shell command -v chromium 2>/dev/null)

chromium:
ifeq ($(CHROMIUM),)
	-(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
		echo "chromium could not be installed: the web console test will be skipped"
endif

# The failover tests start a real etcd: Debian's etcd-server (3.4, /usr/bin/etcd).
ETCD := $(shell command -v etcd 2>/dev/null)

etcd:
ifeq ($(ETCD),)
	-(apt-get update -qq && apt-get install -y -qq etcd-server) >/dev/null 2>&1 || \
		echo "etcd-server could not be installed: the failover tests will be skipped"
endif

test: $(STAMP) chromium etcd
	$(BIN)/python -m pytest -n 2 -m "not slow" -q

# Lint and type-check (settings in pyproject.toml); CI runs it before the tests.
check: $(STAMP)
	$(BIN)/ruff check wal jade replica tools jadevectordb_server
	$(BIN)/mypy wal jade replica tools jadevectordb_server

test-slow: $(STAMP) etcd
	$(BIN)/python -m pytest -m slow -q

crash: $(STAMP)
	$(BIN)/python -m pytest -m crash -q

bench: $(STAMP)
	$(BIN)/python bench/ingest_search.py --quick
	$(BIN)/python bench/restart.py --quick
	$(BIN)/python bench/permission_check.py
	$(BIN)/python bench/replication.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info
