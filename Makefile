# Every target builds the virtual environment it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.polc-installed
SRC    ?= policies-src
OUT    ?= policies
LISTEN ?= 127.0.0.1:8181

.PHONY: run test lint bench bench-scale venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard runtime/*/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,sign,test]'
	touch $@

# The main job: compile policies-src/ and serve decisions from the result.
run: $(STAMP)
	$(BIN)/polc compile $(SRC) -o $(OUT)
	$(BIN)/polc run $(OUT) --listen $(LISTEN)

# The policies' own tests (every rule of $(SRC) reached), then the test suite, one pytest
# process per CPU (tests/parallel.py; POLC_TEST_JOBS=1 for one). Both run; the status is
# pytest's when it fails (5: nothing collected), else polc test's.
test: $(STAMP)
	$(BIN)/polc test $(SRC) --coverage --fail-under 100; policy=$$?; \
	$(BIN)/python tests/parallel.py -q; suite=$$?; \
	if [ $$suite -ne 0 ]; then exit $$suite; fi; exit $$policy

# Lint (product code, tests and benchmarks; the tests' idioms are configured in
# pyproject.toml) and strict type checks of the product code: what .ci/run runs
# before the tests.
lint: $(STAMP)
	$(BIN)/ruff check runtime compiler cli grammar tests benchmarks
	PYTHON=$(BIN)/python .ci/typecheck

# Benchmarks and peers (docs/benchmarks.md); BENCH_DOC=docs/benchmarks.md also rewrites its table.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[server,sign,test,bench,peers]'
	POLC_BENCH_VIA_MAKE=1 $(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-columns=min,median,max,rounds
	$(if $(BENCH_DOC),$(BIN)/python benchmarks/report.py --write $(BENCH_DOC) > /dev/null && echo "wrote $(BENCH_DOC)")

# The scaling figures at 1,000 / 10,000 / 100,000 modules, each with its target (docs/benchmarks.md).
# Opt-in and slow (the first run builds and compiles the trees into .bench-cache/, git-ignored,
# and keeps them); not part of `make test` or `make bench`. SCALE_ARGS goes to the harness, e.g.
# SCALE_ARGS="--sizes 1000,10000" or SCALE_ARGS="--against ../other/.venv/bin/python".
bench-scale: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[server,sign,test,bench,peers]'
	$(BIN)/python benchmarks/scale/run.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
	find runtime -name '*.so' -delete
