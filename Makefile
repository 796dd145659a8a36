# routingd — the two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test test-busy venv bench soak clean check

# the compiled core (setup.py: mypyc; the engine's modules and the simulator's per-message ones) is
# rebuilt whenever one of its sources changes; until then importing it fails with a clear error
# (daemon/core/__init__.py check_compiled), never runs a stale extension
CORE_SOURCES := setup.py daemon/core/commands.py daemon/core/deadlines.py daemon/core/engine.py daemon/core/health.py \
                daemon/core/outcomes.py daemon/core/plan.py daemon/core/resume.py daemon/core/tree.py daemon/core/walk.py \
                simulator/draws.py simulator/happenings.py simulator/invariants.py simulator/metrics.py \
                simulator/providers.py simulator/readers.py \
                simulator/runner.py simulator/sketch.py simulator/trace.py

$(STAMP): pyproject.toml $(CORE_SOURCES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,plot]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/routingd serve --config routing.toml

check: $(STAMP)
	$(BIN)/routingd check routing.toml

test: $(STAMP)
	@sh tools/ensure-mosquitto.sh
	@sh tools/ensure-postgresql.sh
	@sh tools/ensure-systemd-analyze.sh
	@sh tools/ensure-chromium.sh
	$(BIN)/ruff check --select F --no-cache --quiet .
	$(BIN)/python tools/typecheck.py      # mypy, with the import names (routingd.*)
	$(BIN)/python -m pytest -q

# the suite once with every core kept busy by a bounded busy loop per core (tools/busy.py):
# a test that passes only on an idle machine fails here (docs/reliability.md)
test-busy: $(STAMP)
	@sh tools/ensure-mosquitto.sh
	@sh tools/ensure-postgresql.sh
	@sh tools/ensure-systemd-analyze.sh
	@sh tools/ensure-chromium.sh
	$(BIN)/python tools/busy.py --max-seconds 3600 -- $(BIN)/python -m pytest -q

soak: $(STAMP)
	@sh tools/ensure-mosquitto.sh
	@sh tools/ensure-postgresql.sh
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	@sh tools/ensure-wrk.sh
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis daemon/core/*.so simulator/*.so
