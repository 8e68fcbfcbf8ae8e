# Two entry points, each self-contained on a fresh machine with Python 3.11 + pip:
#   make demo   - build the toy pool, train it, evaluate the cascade (report + plots in workdir/demo)
#   make test   - the whole test suite
#   make seeds  - the demo once per world/pool seed (SEEDS), then the multi-seed table (workdir/seeds)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/demo
SEEDS ?= 0 1 2
SEEDS_DIR ?= workdir/seeds
PYTEST_ARGS ?=

.PHONY: test demo seeds install clean

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

seeds: $(BIN)/.installed
	for s in $(SEEDS); do \
	  $(BIN)/python -m disrouter_jax.evaluate --config configs/eval_cascade.py:toy --config.seed=$$s \
	    --workdir $(SEEDS_DIR)/seed_$$s || exit 1; \
	done
	$(BIN)/python -m disrouter_jax.seed_table --out $(SEEDS_DIR) $(foreach s,$(SEEDS),$(SEEDS_DIR)/seed_$(s)/report.json)

clean:
	rm -rf $(VENV) workdir
