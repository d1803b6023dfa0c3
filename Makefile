# difforge: `make run` trains the quick-start model and writes its samples; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
RUN := runs/quickstart

.PHONY: run test install install-test data browser bench clean-venv

# `make run` needs difforge alone; `make test` adds every extra the tests use (a minute more to install).
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# torch is installed first and pinned: an unpinned torch lets pip pick a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist package, when apt is available.
data:
	@if [ -d $(FMNIST) ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else echo "apt-get not found: put the four Fashion-MNIST idx files in a folder and pass --data PATH"; fi

# Chromium + chromedriver from Debian, for the web page's browser test (tests/serve), when apt is available.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "Chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; } || \
	  echo "warning: could not install chromium + chromium-driver: the browser test will be skipped"; \
	else echo "apt-get not found: install chromium and chromedriver to run the browser test"; fi

# Trains the default model (configs/quickstart.yaml) and writes
# $(RUN)/samples/final.png, one row per class. Run again to resume or redo the samples.
run: install data
	@if [ -f $(RUN)/config.yaml ]; then \
	  $(BIN)/difforge train --out $(RUN) --resume; \
	else \
	  $(BIN)/difforge train --config configs/quickstart.yaml; \
	fi
	@echo "samples: $(RUN)/samples/final.png"

# Installs what the tests need (Fashion-MNIST, Chromium for the web page test), checks the code
# with ruff (pyproject.toml's [tool.ruff]; a finding fails the target), then runs the tests.
test: install-test data browser
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest

bench: install-test
	$(BIN)/python benchmarks/train_throughput.py
