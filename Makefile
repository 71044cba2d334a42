# make demo   - build the sandbox (PostgreSQL, 3 gunicorn hosts, nginx) and deploy release 1 then 2 under load
# make test   - lint, sanity, unit, integration and end-to-end tests (starts every server it needs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export PATH := $(BIN):$(PATH)

.PHONY: deps demo demo-clean test lint sanity unit integration e2e molecule build clean bench-plan-speed bench-accuracy bench-lock-queue bench-snapshot bench-rolling bench-backfill

deps: $(VENV)/.installed .build/collections/ansible_collections/safedeploy/django
	@bash devtools/system-deps.sh

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

.build/collections/ansible_collections/safedeploy/django:
	mkdir -p $(@D)
	ln -sfn $(CURDIR) $@

demo: deps
	$(BIN)/python -m devtools.demo

demo-clean:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m devtools.sandbox down --purge; else rm -rf .sandbox; fi

test: deps
	bash devtools/run-tests.sh all

lint sanity unit integration e2e molecule: deps
	bash devtools/run-tests.sh $@

# Benchmarks print ratios against baselines measured in the same run (see benchmarks/).
bench-plan-speed: deps
	$(BIN)/python benchmarks/plan_speed/run.py

bench-accuracy: deps
	$(BIN)/python benchmarks/accuracy/run.py

# App query latency while a migration queues behind a long transaction: manage.py migrate vs
# django_migrate_once with lock_timeout and retries (goal: worst app latency <= lock_timeout x 1.2).
bench-lock-queue: deps
	$(BIN)/python benchmarks/lock_queue/run.py

# Dump throughput on a generated ~1 GB database: bare pg_dump -Fc vs pg_snapshot (custom; directory with 2 jobs).
# Goals: pg_snapshot's dump phase >= 0.9x the bare dump's throughput; directory + 2 jobs faster than the bare dump.
bench-snapshot: deps
	$(BIN)/python benchmarks/snapshot/run.py

# Failed requests and latency through nginx while the sandbox fleet changes release under steady load
# (reads and order-inserting POSTs, >= 10,000 per run): no deploy, deploy.yml of 2.0.0 (with migrations),
# and every gunicorn restarted at once. Goals: 0 failed requests for the deploy; its p99 <= 2x the no-deploy p99.
bench-rolling: deps
	$(BIN)/python benchmarks/rolling_under_load/run.py

# Application write latency and throughput while 1,000,000 rows are backfilled: one UPDATE of every row vs
# django_backfill. Goals: worst app write <= longest batch (+ margin); throughput >= 0.5x the single UPDATE.
bench-backfill: deps
	$(BIN)/python benchmarks/backfill/run.py

build: deps
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist .

clean: demo-clean
	rm -rf .build $(VENV)
