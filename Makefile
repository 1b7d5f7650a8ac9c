# Every target that needs Python creates (or refreshes, when pyproject.toml changes) the venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aciq-installed
# torch threads of the results tables (they are identical for a fixed thread count; the tables state it)
THREADS ?= 2

.PHONY: venv data reproduce reproduce-clean figures results results-full test test-fast bench screenshot clean

# Fashion-MNIST (the embedded labelled benchmark) comes from Debian's dataset-fashion-mnist package;
# ACIQ_FASHION_MNIST=<folder with the four IDX .gz files> skips the install.
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

data:
	@if [ -n "$$ACIQ_FASHION_MNIST" ] || [ -f $(FMNIST) ]; then :; else \
	  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }; fi

## The main job: every theory table and figure, the embedded models' weight figures and results tables.
## Finished rows are cached under figures/.cache: an interrupted run resumes; `make reproduce-clean` forgets them.
reproduce: $(STAMP) data
	$(BIN)/aciq figures --out figures/
	$(BIN)/aciq tables --out figures/
	$(BIN)/aciq model-figures --model resnet20_fmnist mobilenet_fmnist efficientnet_lite0 --out figures/
	$(BIN)/aciq results --out figures/ --threads $(THREADS)

reproduce-clean:
	rm -rf figures/.cache

figures: $(STAMP)
	$(BIN)/aciq figures --out figures/
	$(BIN)/aciq tables --out figures/

results: $(STAMP) data
	$(BIN)/aciq results --out figures/ --threads $(THREADS)

## The longer grid: also the seed's conventions and the per-tensor calibrators (results-*.md, same files).
results-full: $(STAMP) data
	$(BIN)/aciq results --out figures/ --threads $(THREADS) --grid full

## The whole test suite: unit, property, doctests, PTX, simulator and notebooks.
test: $(STAMP) data
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP) data
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not notebook"

## Speed measurements (ratios from one run; never part of the tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_alpha.py
	$(BIN)/python benchmarks/bench_kernels_cpu.py --quick
	$(BIN)/python benchmarks/bench_calibration.py
	$(BIN)/python benchmarks/bench_fakequant.py
	$(BIN)/python benchmarks/bench_explore.py

## figures/explore.png: notebooks/00-explore.ipynb in JupyterLab, in headless Chromium (Debian's chromium
## package) driven by Playwright, a control moved. Not part of `make test`.
screenshot: $(STAMP)
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y -q chromium || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }
	@$(BIN)/python -c "import playwright, ipywidgets" 2>/dev/null || $(BIN)/pip install -e '.[screenshot]'
	$(BIN)/python scripts/screenshot.py --out figures/explore.png --chromium "$$(command -v chromium)"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
