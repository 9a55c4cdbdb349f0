# `make run` and `make test` work on a fresh machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` installs what serving needs; the targets that test, lint or measure add the
# development tools (pytest, Playwright, mypy, ...).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev run test test-unit lint format bench soak clean

install: $(RUN_STAMP)
install-dev: $(DEV_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(RUN_STAMP) $(DEV_STAMP)

run: install
	$(BIN)/ledger migrate
	exec $(BIN)/ledger serve

# Test modules run on two workers (most of a test's time is waiting on servers, streams and
# PostgreSQL); a module stays on one worker, so its server and database are its own.
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Pure logic and live/ against an in-memory ledger: no database, seconds.
test-unit: install-dev
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The fan-out comparison needs nginx with the Nchan module; as root on Debian, get it.
bench: install-dev
	@[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || [ "$$(id -u)" != 0 ] || \
		! command -v apt-get >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null || \
		echo "could not install nginx + Nchan: the comparison will be skipped"
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# 10,000 resuming streams over 1,000 sessions under appends, a fault halfway, an exact count
# (SOAK_ARGS: --seconds, --fault kill-worker|drop-connections|none, ...).
soak: install-dev
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
