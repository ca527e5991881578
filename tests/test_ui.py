"""The UIs in a real browser (slow; `make test-ui`, which installs Debian's chromium).

One tracked training on the smoke profile (generate → manifest → train → plan for Push-T, with a tiny model)
reports to a Prefect server and to a temporary MLflow store; then `mlflow server` and `prefect server start`
run on free 127.0.0.1 ports, `python -m pipelines.serve` serves the deployments against that server, and
headless Chromium (playwright driving the system's chromium) checks what a person would:

- Prefect: the deployments page lists `full-pipeline/nightly` and `bisect/weekly-<env>` for every world
  with their schedules; "Run" → "Quick run" on `weekly-pusht` (served with cheap λ-search settings) starts
  a flow run that the UI and the API both show Completed. That λ search registers its best model and gives
  it the alias `champion`, as the weekly search does.
- MLflow: the experiment lists the training run and the search; the run page shows the loss metrics, the
  curves plot and the planning GIFs (loaded images, not only file names); the registered model `lewm-pusht`
  shows the champion's version with the alias `champion`.

Everything lives under the test's tmp_path (MLflow database and artifacts, Prefect home and database, the
working directory with data/ and runs/), and every server is stopped in teardown, also on failure.
Screenshots of each page go to tmp_path/screenshots; with LEWM_UI_SCREENSHOTS=DIR (`make ui-screenshots`:
docs/screenshots) a passing run also copies them there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_MODEL, background
from test_orchestration import clean_env, free_port, wait_until

from lewm.config import load_params
from lewm.registry import CHAMPION

PYTHON = sys.executable
BIN = Path(PYTHON).parent
CHROMIUM = os.environ.get("LEWM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS_ENV = "LEWM_UI_SCREENSHOTS"

ENV = "pusht"
MODEL_NAME = f"lewm-{ENV}"
SMOKE = ["profile=smoke", *TINY_MODEL]
"""The smoke profile (20 episodes, 30 training steps, 4 planning pairs, one GIF per method) with the tests'
tiny model: the four stages took 45 s to 5 min on 2 cores shared with a training (nice 19)."""
SEARCH_TRIALS = 3
CHEAP_SEARCH = [f"bisect.trials={SEARCH_TRIALS}", "bisect.train_steps=10", "bisect.min_emb_std=0",
                "bisect.min_effective_rank_fraction=0"]
"""The λ search the served deployments default to: round 0 only (3 trials of 10 steps). The collapse
thresholds are off because every 10-step trial has collapsed-looking embeddings, and a search whose best
trial collapsed names no champion."""

NIGHTLY_TEXT = "At 02:00 AM every day"  # how the Prefect UI renders `0 2 * * *` (browser in UTC)
WEEKLY_TEXT = "At 03:00 AM, only on Sunday"  # `0 3 * * 0`
UI_TIMEOUT_MS = 120_000  # a page or an element, on a 2-core machine that may be training at the same time
RUN_TIMEOUT_S = 900  # the UI-triggered λ search (measured 54 s to 3 min on 2 busy cores)

MLFLOW_LOCAL_STORAGE = {
    # what a returning user has already dismissed: the assistant side panel (it would cover a third of
    # every page) and the model registry's "new UI" promo dialog (it blocks clicks on the models page)
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "_mlflow_model_registry_promo_modal_dismissed_v1": "true",
}


def sets(overrides: list[str]) -> list[str]:
    """`--set` options for a CLI of the project."""
    return [arg for override in overrides for arg in ("--set", override)]


@dataclass(frozen=True)
class Stack:
    """The running servers and where everything of this test lives."""

    root: Path  # working directory of the pipeline and of `serve`: data/, runs/
    env: dict[str, str]  # the environment that points a subprocess at the temp stores and the server
    tracking_uri: str
    mlflow_url: str
    prefect_url: str  # the UI; the API is under /api

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text()[-tail:] if path.is_file() else ""
        return f"--- {path} (last {tail} characters) ---\n{text}"


def healthy(url: str) -> bool:
    """Whether `url` answers 200 (an exception when nothing listens: `wait_until` treats it as not yet)."""
    import httpx

    return httpx.get(url, timeout=2).status_code == 200


@contextlib.contextmanager
def ui_stack(root: Path) -> Iterator[Stack]:
    """The Prefect and MLflow servers on free local ports, the tracked smoke run reported to both, and the
    deployments served; yields when all of it is ready."""
    mlflow_port, prefect_port = free_port(), free_port()
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    prefect_url = f"http://127.0.0.1:{prefect_port}"
    env = clean_env(
        PREFECT_HOME=str(root / "prefect-home"), PREFECT_API_URL=f"{prefect_url}/api",
        PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_TRACKING_URI=tracking_uri, LEWM_PROJECT_ROOT=str(root),  # artifacts go to root/mlartifacts
        MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no GenAI job workers: 7 processes fewer
    )
    stack = Stack(root=root, env=env, tracking_uri=tracking_uri, mlflow_url=f"http://127.0.0.1:{mlflow_port}",
                  prefect_url=prefect_url)
    deployments = ["full-pipeline/nightly", *(f"bisect/weekly-{world}" for world in load_params().envs)]
    with contextlib.ExitStack() as servers:
        prefect = servers.enter_context(background(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            root, stack.env, root / "prefect-server.log"))
        wait_until(lambda: healthy(f"{stack.api_url}/health"), 180, "prefect server", prefect)

        started = time.monotonic()
        pipeline = [PYTHON, "-m", "pipelines.full", "--env", ENV, "--stages", "generate,manifest,train,plan",
                    *sets(SMOKE)]
        with (root / "pipeline.log").open("w") as out:
            result = subprocess.run(pipeline, cwd=root, env=stack.env, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=1200)
        assert result.returncode == 0, stack.log("pipeline")
        print(f"smoke pipeline (generate, manifest, train, plan) in {time.monotonic() - started:.0f} s")

        mlflow = servers.enter_context(background(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", tracking_uri, "--default-artifact-root",
             str(root / "mlartifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            root, stack.env, root / "mlflow-server.log"))
        serve = servers.enter_context(background(
            [PYTHON, "-m", "pipelines.serve", *sets([*SMOKE, *CHEAP_SEARCH])], root, stack.env,
            root / "serve.log"))
        wait_until(lambda: healthy(f"{stack.mlflow_url}/health"), 180, "mlflow server", mlflow)
        wait_until(lambda: all(healthy(f"{stack.api_url}/deployments/name/{name}") for name in deployments),
                   180, "served deployments", serve)
        yield stack


def flow_run_state(stack: Stack, flow_run_id: str) -> str:
    """The state type of a flow run, read from the Prefect API (SCHEDULED, RUNNING, COMPLETED, ...)."""
    import httpx

    response = httpx.get(f"{stack.api_url}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]["type"]


class Screenshots:
    """PNG screenshots of the pages, numbered in the order the test takes them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def take(self, page: Any, name: str) -> None:
        path = self.directory / f"{len(self.paths) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        self.paths.append(path)

    def publish(self, target: Path) -> None:
        """Replace the screenshots in `target` with these."""
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.png"):
            old.unlink()
        for path in self.paths:
            shutil.copy2(path, target / path.name)


@contextlib.contextmanager
def browser_page(trace_dir: Path) -> Iterator[Any]:
    """A page of headless Chromium (the system's chromium, driven by playwright): 1600×900, clock in UTC
    (the schedules are UTC), MLflow's first-visit panels dismissed."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 900}, timezone_id="UTC",
                                          locale="en-US")
            context.add_init_script("".join(f"window.localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                                            for k, v in MLFLOW_LOCAL_STORAGE.items()))
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            try:
                yield page
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(trace_dir / "failure.png"))
                raise
        finally:
            browser.close()


# ----------------------------------------------------------------------------------------------- Prefect


def check_deployments(page: Any, stack: Stack, shots: Screenshots) -> None:
    """The deployments page lists the nightly pipeline and the weekly λ search of every world, each with
    its schedule."""
    from playwright.sync_api import expect

    page.goto(f"{stack.prefect_url}/deployments")
    rows = page.get_by_role("row")
    expect(rows.filter(has_text="nightly")).to_contain_text("full-pipeline")
    expect(rows.filter(has_text="nightly")).to_contain_text(NIGHTLY_TEXT)
    for world in load_params().envs:
        row = rows.filter(has_text=f"weekly-{world}")
        expect(row).to_contain_text("bisect")
        expect(row).to_contain_text(WEEKLY_TEXT)
    shots.take(page, "prefect-deployments")


def quick_run_weekly_search(page: Any, stack: Stack, shots: Screenshots) -> str:
    """Open `bisect/weekly-pusht`, check its schedule, start it with "Run" → "Quick run", follow the toast
    to the flow run and wait until both the API and the open page say Completed; then the run's task runs
    are its trials and the publishing task, all Completed. Returns the flow run id."""
    from playwright.sync_api import expect

    page.get_by_role("link", name=f"weekly-{ENV}").first.click()
    expect(page.get_by_text(WEEKLY_TEXT).first).to_be_visible()
    expect(page.get_by_text("pipelines.bisect.bisect_flow")).to_be_visible()  # the entrypoint
    shots.take(page, "prefect-deployment")

    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Quick run", exact=True).click()
    # the toast (Prefect 3.9 stacks two identical ones; the last is on top)
    page.get_by_role("button", name="View run").last.click()
    page.wait_for_url("**/runs/flow-run/*")
    flow_run_id = page.url.rstrip("/").split("/")[-1].split("?")[0]

    started = time.monotonic()
    terminal = wait_until(lambda: (state := flow_run_state(stack, flow_run_id)) in
                          {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} and state, RUN_TIMEOUT_S,
                          "the flow run started from the UI")
    assert terminal == "COMPLETED", f"flow run {flow_run_id}: {terminal}\n{stack.log('serve')}"
    print(f"UI-triggered weekly-{ENV} run completed in {time.monotonic() - started:.0f} s")
    badge = page.locator(".state-badge").first  # the run's own state, in the page header
    expect(badge).to_have_text("Completed")  # the open page updates itself
    expect(page.get_by_role("link", name=f"weekly-{ENV}")).to_be_visible()  # the run's deployment

    page.reload()  # the run graph, drawn from the finished run instead of updated while it ran
    tasks = SEARCH_TRIALS + 1  # the trials and the publishing task
    expect(page.get_by_text(f"{tasks} Task runs", exact=True).first).to_be_visible()
    page.get_by_text("Task Runs", exact=True).click()
    expect(page.get_by_text(re.compile(rf"\({tasks} completed\)", re.IGNORECASE)).first).to_be_visible()
    expect(page.get_by_role("link", name=re.compile(r"^trial-lambda="))).to_have_count(SEARCH_TRIALS)
    expect(page.get_by_role("link", name=re.compile(r"^publish-bisection"))).to_be_visible()
    shots.take(page, "prefect-flow-run")
    return flow_run_id


# ------------------------------------------------------------------------------------------------ MLflow


def mlflow_page(stack: Stack, route: str) -> str:
    """The address of an MLflow UI page in its "Model training" view (MLflow 3 opens experiments in its
    GenAI view, which has no runs table)."""
    return f"{stack.mlflow_url}/#/{route}?workflowType=machine_learning"


def check_experiment(page: Any, stack: Stack, shots: Screenshots, experiment_id: str, run_id: str) -> None:
    """The experiment's runs list shows the training run (linking to its page) and the λ search."""
    from playwright.sync_api import expect

    page.goto(mlflow_page(stack, f"experiments/{experiment_id}/runs"))
    link = page.get_by_role("link", name=f"train-{ENV}", exact=True)
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", re.compile(f"/runs/{run_id}"))
    expect(page.get_by_role("link", name=f"bisect-{ENV}", exact=True)).to_be_visible()
    shots.take(page, "mlflow-experiment")


def check_training_run(page: Any, stack: Stack, shots: Screenshots, experiment_id: str, run_id: str) -> None:
    """The training run's page: its loss and planning metrics, its training curves as charts, and in the
    artifacts the curves plot and the planning GIFs of LeWM and both floors, each shown as an image.
    Pages are opened by address (the links the UI offers drop the "Model training" view)."""
    from playwright.sync_api import expect

    run_page = f"experiments/{experiment_id}/runs/{run_id}"
    page.goto(mlflow_page(stack, run_page))
    search = page.get_by_placeholder("Search metrics")
    search.fill("plan/lewm.")
    for metric in ("plan/lewm.reference.success_rate", "plan/lewm.block.success_rate"):
        expect(page.get_by_role("row").filter(has_text=metric).first).to_be_visible()
    search.fill("loss")
    for metric in ("train/pred_loss", "train/sigreg_loss", "val/pred_loss", "val/sigreg_loss"):
        expect(page.get_by_role("row").filter(has_text=metric).first).to_be_visible()
    shots.take(page, "mlflow-run")

    page.goto(mlflow_page(stack, f"{run_page}/model-metrics"))
    page.get_by_placeholder("Search metric charts").fill("train/")  # the curves, not the final values
    for metric in ("train/pred_loss", "train/sigreg_loss"):
        expect(page.get_by_text(f"train-{ENV} ({metric})").first).to_be_visible()  # a chart's legend
    shots.take(page, "mlflow-run-charts")

    page.goto(mlflow_page(stack, f"{run_page}/artifacts"))
    page.get_by_text("plots", exact=True).click()
    page.get_by_text("curves.png", exact=True).click()
    expect(page.get_by_text("plots/curves.png").first).to_be_visible()  # the preview's title
    expect_image_shown(page)
    shots.take(page, "mlflow-run-curves")
    page.get_by_text("plan", exact=True).click()
    for method in ("random", "zero", "lewm"):  # LeWM last: its GIF is the one in the screenshot
        page.get_by_text(f"{method}_pair000.gif", exact=True).click()
        expect(page.get_by_text(f"plan/{method}_pair000.gif").first).to_be_visible()
        expect_image_shown(page)
    shots.take(page, "mlflow-run-gif")


def expect_image_shown(page: Any) -> None:
    """The artifact preview shows an image that the browser has decoded (not a broken or pending one)."""
    from playwright.sync_api import expect

    image = page.locator("img[src^='blob:']").first
    expect(image).to_be_visible()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())


def check_champion(page: Any, stack: Stack, shots: Screenshots, version: str) -> None:
    """The registered models list shows `lewm-pusht` with `@ champion` on `version`, and the model's page
    shows that version's row with the alias."""
    from playwright.sync_api import expect

    page.goto(mlflow_page(stack, "models"))
    listed = page.get_by_role("row").filter(has_text=MODEL_NAME)
    expect(listed).to_contain_text("champion")
    expect(listed).to_contain_text(f"Version {version}")
    link = page.get_by_role("link", name=MODEL_NAME, exact=True)
    expect(link).to_have_attribute("href", re.compile(f"/models/{MODEL_NAME}$"))
    page.goto(mlflow_page(stack, f"models/{MODEL_NAME}"))
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
    expect(row).to_contain_text("champion")
    expect(page.get_by_role("link", name="Version 1", exact=True)).to_be_visible()  # the training's version
    shots.take(page, "mlflow-registered-model")


# -------------------------------------------------------------------------------------------------- test


@pytest.mark.slow
def test_uis_show_the_run_the_champion_and_the_deployments(tmp_path: Path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test-ui` installs Debian's chromium "
                    f"(or set LEWM_CHROMIUM to a Chromium binary)")
    pytest.importorskip("playwright", reason="playwright is in the dev extra: run `make install`")
    shots = Screenshots(tmp_path / "screenshots")
    started = time.monotonic()
    with ui_stack(tmp_path) as stack, browser_page(tmp_path) as page:
        print(f"servers and smoke run ready in {time.monotonic() - started:.0f} s; logs in {tmp_path}")
        check_deployments(page, stack, shots)
        quick_run_weekly_search(page, stack, shots)

        from mlflow import MlflowClient

        client = MlflowClient(stack.tracking_uri)
        champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)  # set by the search just run
        assert {"lambda", "criterion"} <= set(champion.tags), champion.tags
        experiment = client.get_experiment_by_name(load_params().tracking.experiment)
        trained = json.loads((tmp_path / "runs" / ENV / "train" / "run.json").read_text())
        assert trained["registered_model"] == MODEL_NAME and trained["model_version"] == "1"
        assert champion.version != "1"  # the search's model, not the smoke training's

        check_experiment(page, stack, shots, experiment.experiment_id, trained["run_id"])
        check_training_run(page, stack, shots, experiment.experiment_id, trained["run_id"])
        check_champion(page, stack, shots, champion.version)
    print(f"test_ui: {time.monotonic() - started:.0f} s in all; screenshots in {shots.directory}")
    if os.environ.get(SCREENSHOTS_ENV):
        shots.publish(Path(os.environ[SCREENSHOTS_ENV]))
