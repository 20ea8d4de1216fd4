# The two commands a new user runs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install lint browser hosts-tools bench bench-peers bench-io bench-memory clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian chromium for the browser tests (Playwright drives it; it never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium for the browser tests"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		else sudo apt-get update -q && sudo apt-get install -y -q chromium; fi; }

# libfaketime and nftables for the hosts suite's clock-skew and one-way link tests (tests/hosts; skipped
# with the reason without them).
hosts-tools:
	@command -v faketime >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
		echo "installing Debian faketime for the hosts suite"; \
		apt-get install -y -q faketime || { apt-get update -q && apt-get install -y -q faketime; } || \
		echo "faketime not installed: the clock-skew tests will be skipped"; }
	@command -v nft >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
		echo "installing Debian nftables for the hosts suite"; \
		apt-get install -y -q nftables || { apt-get update -q && apt-get install -y -q nftables; } || \
		echo "nftables not installed: the one-way link test will be skipped"; }

run: export DEBUG = 1
run: $(STAMP)
	mkdir -p var/mail
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_demo_catalog
	@echo "Shop on http://127.0.0.1:8000 (admin: python manage.py createsuperuser). Ctrl+C stops both."
	EMAIL_URL=$${EMAIL_URL:-filemail://$(CURDIR)/var/mail} bash -c '\
		trap "kill 0" INT TERM EXIT; \
		$(PY) manage.py runworker & \
		$(PY) manage.py runserver 127.0.0.1:8000 --noreload; wait'

test: $(STAMP) browser hosts-tools
	mkdir -p var
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-peers: $(STAMP)
	$(PY) bench/peers.py $(BENCH_ARGS)

# Issue 19: jobs that wait 50 ms on a local HTTP server, ours (threads and async def) beside Celery's
# threads pool (the peers' venv: ../shared/bench/peers.sh creates it). ~10 minutes.
bench-io: $(STAMP)
	$(PY) bench/celery_io.py $(BENCH_ARGS)

bench-memory: $(STAMP)
	$(PY) bench/memory.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
