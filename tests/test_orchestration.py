"""Prefect orchestration: project settings, the full-pipeline flow (stage order, missing stages, failures),
the scheduled deployments, and (slow) serving them against a real Prefect server and triggering a run."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import background

from lewm.config import PROJECT_ROOT, load_params
from pipelines import full
from pipelines.serve import NIGHTLY_CRON, WEEKLY_CRON, deployments, require_server

PYTHON = sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any PREFECT_* or MLFLOW_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return {**env, **extra}


def test_prefect_settings_keep_prefect_quiet_offline_and_inside_the_project():
    config = tomllib.loads((PROJECT_ROOT / "prefect.toml").read_text())
    assert config["logging"]["level"] == "WARNING"
    assert config["server"]["analytics_enabled"] is False
    probe = ("from prefect.settings import get_current_settings as s; c = s(); "
             "print(c.home.resolve(), c.logging.level, c.server.analytics_enabled, c.api.url)")
    out = subprocess.run([PYTHON, "-c", probe], cwd=PROJECT_ROOT, env=clean_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == [str(PROJECT_ROOT / ".prefect"), "WARNING", "False", "None"]
    assert ".prefect/" in (PROJECT_ROOT / ".gitignore").read_text()


def test_pipeline_steps_respect_stage_dependencies():
    steps = full.pipeline_steps(["pusht", "cube"], compare_envs=["pusht"])
    assert steps[:9] == [(s, "pusht") for s in ("generate", "manifest", "train", "decode", "plan", "probe",
                                                "imagine", "voe", "compare")]
    assert [env for _, env in steps[9:]] == ["cube"] * 8  # cube is not in compare_envs
    order = [stage for stage, _ in steps[:9]]
    for before, after in [("generate", "manifest"), ("manifest", "train"), ("train", "plan"),
                          ("manifest", "plan"), ("train", "decode"), ("decode", "plan"), ("decode", "voe"),
                          ("train", "probe"), ("train", "imagine"), ("train", "voe"),
                          ("plan", "compare")]:
        assert order.index(before) < order.index(after)
    # a subset keeps the pipeline's order, whatever order it was given in
    assert full.pipeline_steps(["pusht"], ["plan", "generate"]) == [("generate", "pusht"), ("plan", "pusht")]


def test_flow_stage_order_follows_the_dvc_graph():
    """Every stage whose outputs another stage depends on in dvc.yaml comes before it in the flow."""
    import yaml

    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    compare_parts = list(full.COMPARE_PARTS)
    assert [n for n in stages if n not in compare_parts] == [s for s in full.STAGES if s != "compare"]
    assert [n for n in stages if n in compare_parts] == compare_parts  # the order compare_stage runs them

    def flow_step(name):
        return "compare" if name in compare_parts else name

    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries]

    def body(stage):  # foreach stages keep their body under `do`, matrix stages at the top
        return stage.get("do", stage)

    def generic(path):  # the same path in foreach (${item}) and matrix (${item.env}) stages
        return path.replace("${item.env}", "${item}")

    producer = {generic(path): name for name, stage in stages.items()
                for path in paths(body(stage).get("outs", []))}
    for name, stage in stages.items():
        for dep in map(generic, paths(body(stage).get("deps", []))):
            for out, maker in producer.items():
                if maker != name and (dep == out or out.startswith(dep + "/")):
                    order = full.STAGES.index(flow_step(maker)), full.STAGES.index(flow_step(name))
                    assert order[0] < order[1] or compare_parts.index(maker) < compare_parts.index(name), \
                        (dep, maker, name)
    with pytest.raises(ValueError, match="unknown stages"):
        full.pipeline_steps(["pusht"], ["generate", "deploy"])
    with pytest.raises(ValueError, match="no environment"):
        full.pipeline_steps([], None)


def test_every_stage_resolves_to_its_plain_function():
    for stage in full.STAGES:
        assert full.stage_function(stage).__name__ == f"{stage}_stage"


def test_a_missing_stage_module_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(full, "STAGES", (*full.STAGES, "distill"))
    with pytest.raises(full.StageUnavailable, match=r"pipelines\.distill is not available"):
        full.stage_function("distill")


def test_full_cli_rejects_unknown_stages_with_one_line():
    result = subprocess.run([PYTHON, "-m", "pipelines.full", "--stages", "generate,deploy"],
                            cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown stages ['deploy'] (known: generate, manifest, train, decode, plan, probe, imagine, "
        "voe, compare)"]


def test_full_flow_runs_the_stages_in_order_and_stops_at_a_failure(prefect_harness, monkeypatch):
    calls: list[tuple[str, str, list[str] | None]] = []

    def fake(stage):
        def run(env, params_path, overrides):
            calls.append((stage, env, overrides))
            if stage == "train" and env == "broken":
                raise ValueError("train failed")
            return stage
        return run

    monkeypatch.setattr(full, "stage_function", fake)
    done = full.full_flow(envs=["pusht"], stages=["generate", "train", "probe"],
                          overrides=["train.max_steps=5"])
    assert done == ["generate@pusht", "train@pusht", "probe@pusht"]
    assert calls == [(stage, "pusht", ["train.max_steps=5"]) for stage in ("generate", "train", "probe")]

    calls.clear()
    with pytest.raises(ValueError, match="train failed"):
        full.full_flow(envs=["broken"], stages=["generate", "train", "probe"])
    assert [stage for stage, _, _ in calls] == ["generate", "train"]  # nothing runs after a failed stage


def test_deployments_and_their_schedules():
    served = {f"{d.flow_name}/{d.name}": d for d in deployments(overrides=["train.max_steps=5"])}
    worlds = load_params().envs
    assert set(served) == {"full-pipeline/nightly", *(f"bisect/weekly-{env}" for env in worlds)}
    nightly, weekly = served["full-pipeline/nightly"], served["bisect/weekly-pusht"]
    assert [s.schedule.cron for s in nightly.schedules] == [NIGHTLY_CRON] == ["0 2 * * *"]
    assert [s.schedule.cron for s in weekly.schedules] == [WEEKLY_CRON] == ["0 3 * * 0"]
    assert nightly.parameters["overrides"] == ["train.max_steps=5"]
    assert weekly.parameters["env"] == "pusht"
    # module entrypoints: the served flows load from the installed package, whatever the working directory
    assert nightly.entrypoint == "pipelines.full.full_flow"
    assert weekly.entrypoint == "pipelines.bisect.bisect_flow"
    assert nightly.concurrency_limit == weekly.concurrency_limit == 1


def test_serving_needs_a_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    no_server = temporary_settings(updates={PREFECT_API_URL: None})
    with no_server, pytest.raises(ValueError, match="prefect server start"):
        require_server()


# --------------------------------------------------------------------------------- against a real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: process exited with {process.returncode}")
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready after {timeout} s")


@contextlib.contextmanager
def prefect_server(tmp_path: Path):
    """`prefect server start` on a free local port with its own home; yields the environment that points
    subprocesses (and MLflow) at it and at temp stores."""
    import httpx

    url = f"http://127.0.0.1:{free_port()}/api"
    env = clean_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=url,
                    PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    PREFECT_UI_ENABLED="false", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
                    LEWM_PROJECT_ROOT=str(tmp_path))
    port = url.split(":")[-1].split("/")[0]
    command = [str(Path(PYTHON).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port]
    with background(command, tmp_path, env, tmp_path / "server.log") as server:
        started = time.monotonic()
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120, "prefect server",
                   server)
        print(f"prefect server ready in {time.monotonic() - started:.1f} s")
        yield env


CHEAP = [arg for world in load_params().envs for key, value in (("episodes", 10), ("max_steps", 20))
         for arg in ("--set", f"data.{world}.{key}={value}")]  # every world: the run generates them all


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["serve", "worker"])
def test_scheduled_deployments_appear_and_run(tmp_path, mode):
    """Against a real Prefect server: `python -m pipelines.serve` (mode serve), or `--work-pool` plus a
    `prefect worker` (mode worker, as in the docker stack). The deployments and their schedules appear
    through the client API, and a triggered cheap run (generation only, 10 tiny episodes) completes and
    writes its dataset in the working directory."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with contextlib.ExitStack() as stack:
        env = stack.enter_context(prefect_server(tmp_path))
        if mode == "serve":
            runner = [PYTHON, "-m", "pipelines.serve", *CHEAP]
        else:
            register = [PYTHON, "-m", "pipelines.serve", *CHEAP, "--work-pool", "lewm-test"]
            subprocess.run(register, cwd=tmp_path, env=env, check=True, timeout=120, capture_output=True)
            runner = [str(Path(PYTHON).parent / "prefect"), "worker", "start", "--pool", "lewm-test"]
        process = stack.enter_context(background(runner, tmp_path, env, tmp_path / f"{mode}.log"))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}))
        with get_client(sync_client=True) as client:
            nightly, weekly = wait_until(
                lambda: [client.read_deployment_by_name(name)
                         for name in ("full-pipeline/nightly", "bisect/weekly-pusht")],
                120, "deployments", process)
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert [s.schedule.cron for s in weekly.schedules] == ["0 3 * * 0"]
        assert all(s.active for s in nightly.schedules + weekly.schedules)

        started = time.monotonic()
        run = run_deployment("full-pipeline/nightly", parameters={"stages": ["generate"]}, timeout=240)
        print(f"{mode}: triggered run finished in {time.monotonic() - started:.1f} s")
        assert run.state.is_completed(), (run.state, (tmp_path / f"{mode}.log").read_text()[-3000:])
    manifest = tmp_path / "data" / "pusht" / "manifest.json"
    assert manifest.is_file() and '"episodes": 10' in manifest.read_text()
