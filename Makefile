# Every target that needs Python creates (or refreshes, when pyproject.toml changes) the venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aciq-installed

.PHONY: venv reproduce figures test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## The main job: every theory table and figure, regenerated from the library.
reproduce: $(STAMP)
	$(BIN)/aciq figures --out figures/
	$(BIN)/aciq tables --out figures/

figures: reproduce

## The whole test suite: unit, property, doctests, PTX, simulator and notebooks.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not notebook"

## Speed measurements (ratios from one run; never part of the tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_alpha.py
	$(BIN)/python benchmarks/bench_kernels_cpu.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
