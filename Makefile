# routingd — the two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test venv bench soak clean check

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/routingd serve --config routing.toml

check: $(STAMP)
	$(BIN)/routingd check routing.toml

test: $(STAMP)
	@sh tools/ensure-mosquitto.sh
	@sh tools/ensure-systemd-analyze.sh
	$(BIN)/ruff check --select F --no-cache --quiet .
	$(BIN)/python -m pytest -q

soak: $(STAMP)
	@sh tools/ensure-mosquitto.sh
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	@sh tools/ensure-wrk.sh
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
