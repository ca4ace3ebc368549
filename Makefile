# The two commands in the README. Both create .venv/ on first use (scripts/setup.sh).
VENV := .venv
PROMPT ?= The capital of France is

.PHONY: setup demo test lint clean-cache

setup:
	@bash scripts/setup.sh

demo: setup
	@mkdir -p reports/demo
	$(VENV)/bin/tokenlens inspect --prompt "$(PROMPT)" --out reports/demo/inspect.json --format json --force
	$(VENV)/bin/tokenlens inspect --prompt "$(PROMPT)"

test: setup
	$(VENV)/bin/ruff check tokenlens tests benchmarks notebooks
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check tokenlens tests benchmarks notebooks
	$(VENV)/bin/ruff format --check tokenlens tests benchmarks notebooks

clean-cache:
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/tokenlens"
