# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format typecheck install services bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

services:
	./devtools/services.sh

## run: the whole service locally (API, one worker per queue, beat, provider fakes) + a demo
run: install services
	$(BIN)/python devtools/run.py

## test: lint and the full suite against real PostgreSQL, Redis and Celery workers
test: install services lint typecheck
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy .

bench: install services
	$(BIN)/python bench/accept.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
