# `make run` and `make test` work on a fresh machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-unit lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/ledger migrate
	exec $(BIN)/ledger serve

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# Pure logic and live/ against an in-memory ledger: no database, seconds.
test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The fan-out comparison needs nginx with the Nchan module; as root on Debian, get it.
bench: install
	@[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || [ "$$(id -u)" != 0 ] || \
		! command -v apt-get >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null || \
		echo "could not install nginx + Nchan: the comparison will be skipped"
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
