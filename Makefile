# The commands of the README. Each creates .venv when it is missing and installs litlab into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.litlab-installed

.PHONY: install test demo bench lint clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q -ra

demo: install
	$(VENV)/bin/litlab demo

bench: install
	$(PY) benchmarks/moe_layer.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/eppo.py
	$(PY) benchmarks/bboxer.py

lint: install
	$(VENV)/bin/ruff check litlab tests benchmarks configs
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
