# Quick start:  make demo   (demo audit on bundled real data, writes a report)
#               make test   (the test suite; CI runs exactly this)
# Both create .venv and install the pinned stack on first use.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: demo test install benchmark casestudy

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch is pinned in the same command so pip takes the CPU wheel (see README)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[test]' 'torch==2.13.0'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepssim demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

casestudy: $(STAMP)
	$(VENV)/bin/deepssim casestudy --out casestudy-out

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/embed_throughput.py --device cpu
