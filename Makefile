# adrgate: `make run` plays the demo day (`adrgate demo`), `make vtn` starts the VTN alone,
# `make test` type-checks (mypy --strict) then runs the test suite; each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run vtn typecheck test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/adrgate demo

vtn: $(VENV)/.installed
	$(BIN)/adrgate vtn

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: typecheck
	$(BIN)/pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m bench.poll_rate

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache
