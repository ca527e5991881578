# Entry points. Every target installs first (scripts/setup.sh is idempotent and fast when done) and calls
# the project's .venv by path, so nothing needs to be activated; DVC stage commands use scripts/python.
VENV := .venv/bin
export MUJOCO_GL ?= osmesa

ENV ?= pusht

.PHONY: install install-browser repro smoke test test-slow test-ui ui-screenshots ui bench lint bisect \
	prefect-server serve

install:
	@bash scripts/setup.sh

# `install` plus Debian's chromium, which only the browser test of the UIs needs (tests/test_ui.py).
install-browser:
	@bash scripts/setup.sh --browser

repro: install
	$(VENV)/dvc repro

# The real dvc repro chain on the tiny `smoke` profile, in a scratch copy (committed results untouched).
smoke: install
	@bash scripts/smoke.sh

test: install
	$(VENV)/python -m pytest -m "not slow" -q

test-slow: install-browser
	$(VENV)/python -m pytest -m slow -q

# The UIs in a real browser: a smoke-profile run, `mlflow server` and `prefect server` on free local ports,
# the deployments served, headless Chromium checking the pages (a few minutes). `ui-screenshots` also
# copies the screenshots of each page into docs/screenshots/ (shown in the README).
test-ui: install-browser
	$(VENV)/python -m pytest tests/test_ui.py -m slow -q

ui-screenshots: install-browser
	LEWM_UI_SCREENSHOTS=$(CURDIR)/docs/screenshots $(VENV)/python -m pytest tests/test_ui.py -m slow -q

# Both UIs on the project's stores: MLflow on http://127.0.0.1:5000, Prefect on http://127.0.0.1:4200 with
# the deployments served (scripts/ui.sh); Ctrl-C stops all.
ui: install
	@bash scripts/ui.sh

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
