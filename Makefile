# The two commands in the README. Both create .venv/ on first use (scripts/setup.sh).
VENV := .venv
PROMPT ?= The capital of France is

EXAMPLE := reports/example/paris-vs-london.html

.PHONY: setup demo test lint example-report notebooks clean-cache

setup:
	@bash scripts/setup.sh

# The main job, the whole loop on the default model: inspect, train two LoRA edits (careless and careful),
# diff each against the base over intended and control probes, check. Writes reports/demo/.
demo: setup
	@bash scripts/demo.sh

# The committed example report (one self-contained HTML file).
example-report: setup
	$(VENV)/bin/tokenlens inspect --prompt "The capital of France is" --target " Paris" --vs " London" \
	  --heads --sources L23.H4 --lens all --ablate L23.H4,L23.H3 --patch "The capital of Italy is" --estimate 5 \
	  --format html --out $(EXAMPLE) --force

# Regenerate (and execute) the example notebooks.
notebooks: setup
	$(VENV)/bin/python notebooks/build.py

test: setup
	$(VENV)/bin/ruff check tokenlens tests benchmarks notebooks
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check tokenlens tests benchmarks notebooks
	$(VENV)/bin/ruff format --check tokenlens tests benchmarks notebooks

clean-cache:
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/tokenlens"
