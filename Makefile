# natproof: make help lists the targets. The virtual environment is created on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo test test-fast lint bench captures clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## correlate the bundled real-kernel capture pair (captures/port-collision)
	$(BIN)/natproof correlate captures/port-collision/inside.pcap captures/port-collision/outside.pcap --format table

# Two workers, a test file to each at a time, for all but the live lab's scenario runs; those run after, alone:
# beside a busy worker the kernel's recorders lost events (many-connections) and udp-remap's timing slipped.
test: $(STAMP)  ## run the whole test suite (live lab tests need root; they skip otherwise)
	MPLBACKEND=Agg $(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --ignore tests/test_lab_live.py
	MPLBACKEND=Agg $(BIN)/pytest -q -p no:cacheprovider tests/test_lab_live.py

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check natproof tests scripts

captures: $(STAMP)  ## regenerate captures/<scenario>/ with the real kernel (needs root)
	$(BIN)/python scripts/make_captures.py

bench: $(STAMP)  ## decode and correlate speed against the dpkt baseline (BENCH_ARGS=--small for CI's size)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
