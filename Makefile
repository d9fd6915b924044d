# The two commands of the quick start are `make demo` and `make test`; each creates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-slow test-all lint bench clean

# The gRPC client tests need the TF-Serving protos; tensorflow-serving-api requires the full
# `tensorflow` wheel, which tensorflow-cpu already provides, hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[cpu,test]"
	$(BIN)/python -m pip install --quiet --no-deps "tensorflow-serving-api==2.21.*"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python training.py configs/demo.ini
	$(BIN)/python inference.py configs/demo.ini

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" -n 2 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_warp.py
	$(BIN)/python benchmarks/bench_label_loss.py
	$(BIN)/python benchmarks/bench_networks.py
	$(BIN)/python benchmarks/bench_breakdown.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_comir.py
	$(BIN)/python benchmarks/bench_graph_building.py

clean:
	rm -rf $(VENV) demo_data runs exports .pytest_cache
