# Entry points. Every target installs first (scripts/setup.sh is idempotent and fast when done) and calls
# the project's .venv by path, so nothing needs to be activated; DVC stage commands use scripts/python.
VENV := .venv/bin
export MUJOCO_GL ?= osmesa

ENV ?= pusht

.PHONY: install repro smoke test test-slow bench lint bisect prefect-server serve

install:
	@bash scripts/setup.sh

repro: install
	$(VENV)/dvc repro

# The real dvc repro chain on the tiny `smoke` profile, in a scratch copy (committed results untouched).
smoke: install
	@bash scripts/smoke.sh

test: install
	$(VENV)/python -m pytest -m "not slow" -q

test-slow: install
	$(VENV)/python -m pytest -m slow -q

# The speed suite: prints a table of figures with ratios against references measured in the same run and
# writes bench/results.json (machine, commit, medians). Other scripts in bench/ are run by hand.
bench: install
	$(VENV)/python bench/suite.py

lint: install
	$(VENV)/ruff check .

# λ bisection for one environment (ENV=pusht); registers the best model as champion.
bisect: install
	$(VENV)/python -m pipelines.bisect --env $(ENV)

# Prefect server and UI on http://127.0.0.1:4200 (run `make serve` in a second terminal).
prefect-server: install
	$(VENV)/prefect server start --host 127.0.0.1

# Scheduled deployments (nightly pipeline, weekly λ search) served against that server.
serve: install
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(VENV)/python -m pipelines.serve
