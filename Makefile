# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := demo-output

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the loop: train v1 → serve → shifted traffic → queue labels → drift → worker retrains, gates, promotes → v2 served
demo: install
	$(BIN)/python examples/demo_loop.py --out $(DEMO)/loop

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check loopml tests bench examples

bench: install
	$(BIN)/python -m bench.train_overhead
	$(BIN)/python -m bench.preprocess_cache
	$(BIN)/python -m bench.accuracy
	$(BIN)/python -m bench.evaluation --only cv
	$(BIN)/python -m bench.evaluation --only threshold,imbalance,explain
	$(BIN)/python -m bench.report_screenshot
	$(BIN)/python -m bench.registry
	$(BIN)/python -m bench.serve --only text,tabular
	$(BIN)/python -m bench.serve --only minilm
	$(BIN)/python -m bench.loop

clean:
	rm -rf $(VENV) $(DEMO) .loopml .pytest_cache
