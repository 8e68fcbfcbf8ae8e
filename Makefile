# Two entry points, each self-contained on a fresh machine with Python 3.11 + pip:
#   make demo   - build the toy pool, train it, evaluate the cascade (report + plots in workdir/demo)
#   make test   - the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/demo
PYTEST_ARGS ?=

.PHONY: test demo install clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

demo: $(BIN)/.installed
	$(BIN)/python -m disrouter_jax.evaluate --config configs/eval_cascade.py:toy --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) workdir
