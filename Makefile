# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-rabbitmq lint format typecheck install services browser bench chaos clean

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

## test: lint and the full suite against real PostgreSQL, Redis and Celery workers, and the
## browser tests in Debian's Chromium
test: install services browser lint typecheck
	$(BIN)/pytest

## browser: Chromium for the browser tests (tests/test_browser.py), from Debian's packages
browser:
	./devtools/browser.sh

## test-rabbitmq: the same suite with RabbitMQ (guest/guest on 127.0.0.1:5672) as the broker, in
## a vhost of its own, created if missing; not part of `make test`. RABBITMQ_QUORUM=1 declares
## quorum queues, in another vhost (a queue's type is fixed when it is first declared).
RABBITMQ_QUORUM ?= 0
RABBITMQ_VHOST ?= notif_tests$(if $(filter 1,$(RABBITMQ_QUORUM)),_quorum)
test-rabbitmq: install services
	rabbitmqctl list_vhosts --silent | grep -qxF '$(RABBITMQ_VHOST)' || rabbitmqctl add_vhost '$(RABBITMQ_VHOST)'
	rabbitmqctl set_permissions -p '$(RABBITMQ_VHOST)' guest '.*' '.*' '.*'
	CELERY_BROKER_URL='amqp://guest:guest@127.0.0.1:5672/$(RABBITMQ_VHOST)' \
	CELERY_RABBITMQ_QUORUM=$(RABBITMQ_QUORUM) $(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy .

$(VENV)/.bench-installed: $(STAMP) requirements-bench.txt
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

## bench: the accept-path and the broadcast benchmarks (bench/README.md); about 20 minutes
bench: install services $(VENV)/.bench-installed
	$(BIN)/python bench/accept.py
	$(BIN)/python bench/broadcast.py

## chaos: the long chaos suite (bench/chaos.py): faults while 3,000 notifications per scenario
## drain, every one accounted for; about 25 minutes. `make test` runs its short version.
chaos: install
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
