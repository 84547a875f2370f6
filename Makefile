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

demo: install
	$(BIN)/python examples/demo_data.py $(DEMO)/breast_cancer.csv
	$(BIN)/loopml describe --data $(DEMO)/breast_cancer.csv --target diagnosis -o $(DEMO)/schema.yaml
	$(BIN)/loopml train --data $(DEMO)/breast_cancer.csv --config $(DEMO)/schema.yaml -o $(DEMO)/model --overwrite
	$(BIN)/loopml evaluate $(DEMO)/model --data $(DEMO)/breast_cancer.csv -o $(DEMO)/metrics-full.json
	$(BIN)/loopml predict $(DEMO)/model --data $(DEMO)/breast_cancer.csv -o $(DEMO)/predictions.csv
	@echo "demo done: model in $(DEMO)/model (metrics.json, report.html inside), predictions in $(DEMO)/predictions.csv"

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
