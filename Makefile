# Entry points. Every target installs first (scripts/setup.sh is idempotent and fast when done).
VENV := .venv/bin
export MUJOCO_GL ?= osmesa

.PHONY: install repro test test-slow bench lint

install:
	@bash scripts/setup.sh

repro: install
	$(VENV)/dvc repro

test: install
	$(VENV)/python -m pytest -m "not slow" -q

test-slow: install
	$(VENV)/python -m pytest -m slow -q

bench: install
	@for script in bench/bench_*.py; do echo "== $$script"; $(VENV)/python $$script || exit 1; done

lint: install
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
