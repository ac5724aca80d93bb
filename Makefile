# The two commands a newcomer needs: `make demo` and `make test`. Both set up everything.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# prometheus provides promtool, which the tests run on the exported metrics and alert rules
DEBIAN_PACKAGES := dataset-fashion-mnist prometheus yamllint
PYTEST_ARGS ?=

.PHONY: demo test test-all install system-packages bench study clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

system-packages:
	scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

demo: install system-packages
	$(BIN)/tpet demo

# pytest exits 5 when it collects nothing (e.g. a -k that matches no test): report it, not fail.
test: install system-packages
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

test-all: PYTEST_ARGS = -m ""
test-all: test

# torchdistill is a benchmark-only dependency: it never enters pyproject.toml
bench: install system-packages
	$(BIN)/pip install --quiet torchdistill==1.1.5
	$(BIN)/python bench/distill_throughput.py --epochs 5 --threads 1 --repeats 2
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/service_bench.py

# The reproduction study (docs/results.md); scikit-learn (its 8x8 digits) comes with the dev
# extra that `install` sets up.
study: install system-packages
	nice -n 10 $(BIN)/python bench/study.py --derive-auto

clean:
	rm -rf $(VENV) runs .pytest_cache
