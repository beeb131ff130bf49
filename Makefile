# Two commands do everything on a fresh machine:
#   make demo   end-to-end demo on the embedded Meta-World benchmark
#   make test   the test suite (what CI runs)
# Both create .venv and install what they need first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
DEMO    ?= outputs/demo

.PHONY: install test test-slow demo bench clean

$(BIN)/repwam: pyproject.toml
	@bash scripts/install.sh "$(PY)" "$(VENV)" "$(TORCH)"
	@touch $@

install: $(BIN)/repwam

test: install
	$(BIN)/python -m pytest -q -n 2

test-slow: install
	$(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/repwam demo --out "$(DEMO)"

bench: install
	$(BIN)/python benchmarks/data_throughput.py

clean:
	rm -rf $(VENV) outputs
