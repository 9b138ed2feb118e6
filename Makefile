# Every target works from a fresh clone: it creates .venv in the repo root and
# installs what it needs. `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQS := $(wildcard requirements/*.txt)
SHARED ?= ../shared
MEDIA ?= $(SHARED)/media/videos

export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install lint typecheck system-deps test test-fast run analyze bench clean

help:
	@echo "make install    create .venv and install requirements (dev included)"
	@echo "make test       lint, type-check and run the whole test suite"
	@echo "make test-fast  tests without the slow full-size architecture checks"
	@echo "make run        the site: migrate, demo accounts, web server + Celery worker (Ctrl-C stops)"
	@echo "make analyze    analyse MEDIA=$(MEDIA) with the installed detectors (CLI)"
	@echo "make bench      speed benchmark (python -m bench.speed) on MEDIA, JSON in var/bench.json"

# A venv made without pip (Debian without python3-venv) is made again, not reused.
$(STAMP): $(REQS)
	@echo "Installing the requirements into $(VENV) (the first time takes several minutes) ..."
	test -x $(BIN)/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/nodeps.txt
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy ensemble explain platform manage.py

# The worker and browser tests need redis-server and Debian's chromium, the proxy
# test nginx (docker/nginx.conf in front of gunicorn): installed here when missing
# and running as root (CI); otherwise those tests skip and say why.
SYSTEM_PACKAGES := redis-server chromium nginx-light

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "note:$$missing not installed (not root): the worker/browser tests will be skipped"; \
	  fi; \
	fi

test: lint typecheck system-deps
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

ADDR ?= 127.0.0.1:8000

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_accounts
	$(BIN)/python manage.py runstack $(ADDR)

analyze: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py analyze $(MEDIA) --json var/run.json --csv var/run.csv

bench: install
	$(BIN)/python -m bench.speed --videos $(MEDIA) --json var/bench.json

clean:
	rm -rf $(VENV) var test-artifacts .mypy_cache .ruff_cache .pytest_cache
