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

.PHONY: help install lint typecheck test test-fast run bench clean

help:
	@echo "make install    create .venv and install requirements (dev included)"
	@echo "make test       lint, type-check and run the whole test suite"
	@echo "make test-fast  tests without the slow full-size architecture checks"
	@echo "make run        analyse MEDIA=$(MEDIA) with the installed detectors"
	@echo "make bench      speed benchmark (bench/speed.py) on MEDIA, JSON in var/bench.json"

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
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

test: lint typecheck
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py analyze $(MEDIA) --json var/run.json --csv var/run.csv

bench: install
	$(BIN)/python bench/speed.py --videos $(MEDIA) --json var/bench.json

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
