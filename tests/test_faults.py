"""Faults and concurrency (issue 16).

A real SIGKILL in the middle of generate, train, plan and a λ-search trial: each stage runs as the same
command DVC runs (`python -m pipelines.<stage>`) in a subprocess on a tiny config, is killed once it is
demonstrably mid-work (a progress marker on disk, never a sleep), and the same command is run again. Nothing
partial may sit where a result is expected, the re-run must clean up the killed run's temporary files, and
the result must equal an uninterrupted run's (datasets byte for byte, training weights bit for bit).

Concurrent writers to one fresh SQLite MLflow store: several processes create runs and log hundreds of
metrics at once through lewm.tracking; every run and every value must arrive.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lewm.config import PROJECT_ROOT

PYTHON = sys.executable
TRAIN = ["train.max_steps=60", "train.checkpoint_every=2", "train.log_every=2", "train.val_every=10",
         "train.plan_eval_every=0"]
PLAN = ["eval.episodes=8", "eval.gifs=8", "eval.budget=10", "plan.cem.samples=32", "plan.cem.elites=4",
        "plan.cem.iterations=2"]


# ------------------------------------------------------------------------------------------------ helpers


def sets(overrides: list[str]) -> list[str]:
    """`--set` arguments for `overrides`."""
    return [arg for override in overrides for arg in ("--set", override)]


def stage_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a stage subprocess: the project importable from any directory, MLflow and
    Prefect pointed at fresh stores under `tmp_path` (never the project's)."""
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "LEWM_PROJECT_ROOT": str(tmp_path),
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
            "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a loaded 2-core machine needs more


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run `command` to completion; its stdout (stderr shown when it fails). On a timeout every process it
    started is stopped too (Prefect's temporary server would outlive it)."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        strays(process.pid, settle=0)
        process.communicate()
        pytest.fail(f"{command}: no result after {timeout} s")
    assert process.returncode == 0, f"{command}: exit {process.returncode}\n{stderr[-4000:]}"
    return stdout


def session_processes(session: int) -> list[tuple[int, str]]:
    """(pid, command) of the live processes in session `session` (zombies left out)."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,stat=,args=", "-s", str(session)], capture_output=True,
                         text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    return [(int(pid), args) for pid, stat, args in rows if not stat.startswith("Z")]


def kill_midway(command: list[str], cwd: Path, env: dict[str, str], ready: Callable[[], bool],
                what: str, timeout: float = 400) -> int:
    """Start `command` in a session of its own, SIGKILL it as soon as `ready()` (a progress marker on disk)
    holds; returns the session id (for `strays`)."""
    log = cwd / f"killed-{int(time.monotonic() * 1000)}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline, killed = time.monotonic() + timeout, False
    try:
        while not _holds(ready):
            if process.poll() is not None:
                pytest.fail(f"{what}: the command ended (exit {process.returncode}) before it was killed; "
                            f"give it more work\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: no progress after {timeout} s\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        killed = True
    finally:
        if not killed:  # the test failed: stop everything it started
            strays(process.pid, settle=0)
        process.wait(timeout=30)
        log.unlink(missing_ok=True)
    return process.pid


def strays(session: int, settle: float = 1.0) -> list[str]:
    """The commands of the processes of `session` still alive `settle` seconds after its leader was killed
    (returned as soon as none is left); they are killed before returning, so none outlives the test."""
    deadline = time.monotonic() + settle
    while (alive := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [args for _, args in alive]


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return bool(condition())
    except (OSError, ValueError, EOFError, RuntimeError):  # a file read while another process writes it
        return False


def leftovers(root: Path) -> list[str]:
    """Temporary paths of atomic writes (lewm.io) anywhere under `root`, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def checkpoint_step(path: Path) -> int:
    """The step of the training checkpoint at `path` (-1 while there is none)."""
    from lewm.checkpoint import read_checkpoint

    return read_checkpoint(path)["step"] if path.is_file() else -1


def assert_same_weights(a: Path, b: Path) -> None:
    """The two training checkpoints hold bit-identical model weights and optimiser state."""
    import torch

    from lewm.checkpoint import read_checkpoint

    first, second = read_checkpoint(a), read_checkpoint(b)
    assert first["step"] == second["step"]
    assert first["model"].keys() == second["model"].keys()
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), f"{name} differs"
    states = first["optimizer"]["state"], second["optimizer"]["state"]
    assert states[0].keys() == states[1].keys()
    for index, state in states[0].items():
        for key, value in state.items():
            assert torch.equal(value, states[1][index][key]), f"optimizer state {index}.{key} differs"


def without(table: pd.DataFrame, *words: str) -> pd.DataFrame:
    """`table` without the columns whose name contains one of `words` (timings differ between runs)."""
    return table[[c for c in table.columns if not any(w in c for w in words)]]


def json_without(path: Path, *words: str) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not any(w in k for w in words)}


# ---------------------------------------------------------------------------------- temporary files


def test_a_rerun_sweeps_what_a_killed_writer_left_but_not_a_live_writers_files(tmp_path):
    """lewm.io: a writer killed inside `atomic_dir`/`atomic_file` leaves its temporary paths (nothing at
    the targets); the next atomic write of the same target removes them, and never the temporary path of a
    writer that is still running."""
    from lewm.io import atomic_dir, atomic_file

    writer = ("import sys, time\nfrom lewm.io import atomic_dir, atomic_file\n"
              "with atomic_dir(sys.argv[1]) as d, atomic_file(sys.argv[2]) as f:\n"
              "    (d / 'part').write_text('half'); f.write_text('half'); print('ready', flush=True)\n"
              "    time.sleep(600)\n")
    dataset, result = tmp_path / "ds", tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    processes = [subprocess.Popen([PYTHON, "-c", writer, str(dataset), str(result)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        killed, live = processes
        killed.kill()
        killed.wait()
        left = leftovers(tmp_path)
        assert len(left) == 4 and not dataset.exists() and not result.exists(), left
        live_paths = [p for p in left if f".tmp-{live.pid}-" in p]

        with atomic_dir(dataset) as tmp:
            (tmp / "part").write_text("whole")
        with atomic_file(result) as tmp:
            tmp.write_text("whole")
        assert (dataset / "part").read_text() == "whole" and result.read_text() == "whole"
        assert leftovers(tmp_path) == live_paths  # the killed writer's are gone, the live one's kept
    finally:
        for process in processes:
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------------------- generate


def test_generate_killed_midway_leaves_no_dataset_and_reruns_identically(tmp_path):
    """SIGKILL while episodes stream into the dataset: nothing at data/pusht (the partial dataset is a
    temporary sibling), and the re-run removes it and writes the same bytes as an uninterrupted run."""
    from lewm.data.storage import EpisodeStore
    from pipelines.generate import generate_stage

    overrides = ["data.pusht.episodes=150", "data.pusht.max_steps=30", "data.pusht.image_size=32",
                 "data.pusht.workers=1"]
    target = tmp_path / "data" / "pusht"
    command = [PYTHON, "-m", "pipelines.generate", "--env", "pusht", "--no-progress", "--out", str(target),
               *sets(overrides)]
    env = stage_env(tmp_path)
    episode_bytes = 31 * 32 * 32 * 3

    def some_episodes_written() -> bool:
        partial = target.parent.glob(".pusht.tmp-*/frames.npy")
        return any(p.stat().st_size > 10 * episode_bytes for p in partial)

    assert strays(kill_midway(command, tmp_path, env, some_episodes_written, "generate")) == []
    assert not target.exists()
    left = leftovers(target.parent)
    assert len(left) == 1 and left[0].startswith(".pusht.tmp-"), left  # the partial dataset, out of the way
    print(f"generate killed: left {left}")

    run(command, tmp_path, env)
    assert sorted(p.name for p in target.parent.iterdir()) == ["pusht"]  # the partial one was swept
    reference = generate_stage("pusht", overrides=overrides, out_dir=tmp_path / "reference", progress=False)
    assert tree(target) == tree(reference)
    assert EpisodeStore.open(target).identity == EpisodeStore.open(reference).identity


# -------------------------------------------------------------------------------------------- train


@pytest.mark.slow
def test_train_killed_midway_resumes_to_bit_identical_weights(tiny_pusht, tiny_model, tmp_path):
    """SIGKILL mid-training: only checkpoints/last.pt (complete) is left, no model, metrics or run file;
    the same command resumes from it and ends with the weights, optimiser state, curves and metrics of an
    uninterrupted run."""
    overrides = [*tiny_model, *TRAIN]
    env = stage_env(tmp_path)

    def command(out: Path) -> list[str]:
        return [PYTHON, "-m", "pipelines.train", "--env", "pusht", "--data", str(tiny_pusht), "--out",
                str(out), "--no-track", *sets(overrides)]

    out = tmp_path / "train"
    last = out / "checkpoints" / "last.pt"
    assert strays(kill_midway(command(out), tmp_path, env, lambda: checkpoint_step(last) >= 6, "train")) == []
    killed_at = checkpoint_step(last)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"train killed at step {killed_at}: left {left}")
    assert 6 <= killed_at < 60
    assert set(left) - set(leftovers(out)) == {"checkpoints/last.pt"}  # no model.pt, metrics.json, run.json

    stdout = run(command(out), tmp_path, env)
    assert f"resuming from {last} at step " in stdout
    assert leftovers(out) == []
    reference = tmp_path / "reference"
    run(command(reference), tmp_path, env)

    assert_same_weights(out / "model.pt", reference / "model.pt")
    assert (out / "val_history.csv").read_bytes() == (reference / "val_history.csv").read_bytes()
    pd.testing.assert_frame_equal(without(pd.read_csv(out / "train_history.csv"), "clips_per_s"),
                                  without(pd.read_csv(reference / "train_history.csv"), "clips_per_s"))
    timing = ("clips_per_s", "train_seconds")
    assert json_without(out / "metrics.json", *timing) == json_without(reference / "metrics.json", *timing)


# --------------------------------------------------------------------------------------------- plan


@pytest.fixture
def plan_project(tiny_pusht: Path, tiny_model: list[str], tmp_path: Path) -> Path:
    """A project directory for the plan stage (it reads data/pusht, runs/pusht/train/model.pt and
    runs/pusht/manifests/test.parquet relative to the working directory): a 4-step tiny model."""
    from lewm.config import load_params
    from lewm.train import train
    from pipelines.manifest import manifest_stage

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "pusht").symlink_to(tiny_pusht)
    params = load_params(overrides=[*tiny_model, "train.max_steps=4"], env="pusht")
    train(params, "pusht", tiny_pusht, project / "runs" / "pusht" / "train", progress=False)
    manifest_stage("pusht", overrides=[*tiny_model, *PLAN], data_dir=tiny_pusht,
                   out_dir=project / "runs" / "pusht" / "manifests")
    return project


@pytest.mark.slow
def test_plan_killed_midway_leaves_no_results_and_reruns_to_the_same_results(plan_project, tiny_model,
                                                                              tmp_path):
    """SIGKILL after some episodes were planned (their GIFs written): no episodes table, metrics or GIF
    directory of the killed run; the re-run sweeps its temporary GIF directory and gives the results and
    GIFs of an uninterrupted run."""
    env = stage_env(tmp_path)

    def command(out: str) -> list[str]:
        return [PYTHON, "-m", "pipelines.plan", "--env", "pusht", "--no-track", "--out", out,
                *sets([*tiny_model, *PLAN])]

    out = plan_project / "runs" / "pusht" / "plan"

    def some_gifs() -> bool:
        return any(".tmp-" not in p.name for p in out.rglob("*.gif"))

    assert strays(kill_midway(command(str(out)), plan_project, env, some_gifs, "plan")) == []
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    print(f"plan killed: left {left}")
    assert not any((out / name).exists() for name in ("episodes.parquet", "metrics.json", "gifs")), left

    run(command(str(out)), plan_project, env)
    assert leftovers(out) == []
    reference = plan_project / "runs" / "pusht" / "reference"
    run(command(str(reference)), plan_project, env)
    timing = ("plan_time",)
    pd.testing.assert_frame_equal(without(pd.read_parquet(out / "episodes.parquet"), *timing),
                                  without(pd.read_parquet(reference / "episodes.parquet"), *timing))
    assert json_without(out / "metrics.json", *timing) == json_without(reference / "metrics.json", *timing)
    assert tree(out / "gifs") == tree(reference / "gifs") and len(tree(out / "gifs")) == 3 * 8


# -------------------------------------------------------------------------------------- λ-search trial


@pytest.mark.slow
def test_bisect_trial_killed_midway_resumes_to_the_same_search(tiny_pusht, tiny_model, tmp_path):
    """SIGKILL of `python -m pipelines.bisect` while its trial trains: no trace, best.json or trial result;
    the same command resumes the trial from its checkpoint and gives the trace, trial model and validation
    episodes of an uninterrupted search. Nothing the killed command started outlives it (Prefect's temporary
    API server did before pipelines._reaper)."""
    overrides = [*tiny_model, "bisect.trials=1", "bisect.train_steps=40", "bisect.val_episodes=2",
                 "train.checkpoint_every=2", "train.val_every=10", "plan.cem.samples=32", "plan.cem.elites=4",
                 "plan.cem.iterations=2", "eval.budget=10"]
    env = stage_env(tmp_path)

    def command(out: Path) -> list[str]:
        return [PYTHON, "-m", "pipelines.bisect", "--env", "pusht", "--data", str(tiny_pusht), "--out",
                str(out), "--no-track", *sets(overrides)]

    out = tmp_path / "bisect"

    def trial_step() -> int:
        return max([checkpoint_step(p) for p in out.glob("trials/*/train/checkpoints/last.pt")], default=-1)

    stray = strays(kill_midway(command(out), tmp_path, env, lambda: trial_step() >= 6, "bisect"), settle=10)
    assert stray == [], f"SIGKILL of pipelines.bisect left processes running (killed now): {stray}"
    killed_at = trial_step()
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"bisect killed at trial step {killed_at}: left {left}; stray processes {stray}")
    assert 6 <= killed_at < 40
    assert not any((out / name).exists() for name in ("search.parquet", "search.png", "best.json"))
    assert not list(out.glob("trials/*/result.json")) and not list(out.glob("trials/*/train/model.pt"))

    stdout = run(command(out), tmp_path, env)
    assert "after 1 trials (0 cached)" in stdout
    assert leftovers(out) == []
    reference = tmp_path / "reference"
    run(command(reference), tmp_path, env)

    trial = [p.parent.name for p in out.glob("trials/*/result.json")]
    assert [p.parent.name for p in reference.glob("trials/*/result.json")] == trial and len(trial) == 1
    assert_same_weights(out / "trials" / trial[0] / "train" / "model.pt",
                        reference / "trials" / trial[0] / "train" / "model.pt")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "search.parquet"),
                                  pd.read_parquet(reference / "search.parquet"))
    assert json.loads((out / "best.json").read_text()) == json.loads((reference / "best.json").read_text())
    timing = ("plan_time",)
    episodes = [pd.read_parquet(root / "trials" / trial[0] / "val_episodes.parquet")
                for root in (out, reference)]
    pd.testing.assert_frame_equal(without(episodes[0], *timing), without(episodes[1], *timing))


@pytest.mark.slow
def test_parallel_bisect_killed_midway_stops_its_trial_workers(tiny_pusht, tiny_model, tmp_path):
    """`bisect.parallel=2`: SIGKILL of the search while two trials train in worker processes. The workers
    end with it instead of going on writing the trials' checkpoints beside a re-run (before pipelines._reaper
    they did, each with a temporary Prefect server of its own), no server outlives it, and the re-run
    finishes all three trials, resuming the interrupted ones."""
    overrides = [*tiny_model, "bisect.trials=3", "bisect.parallel=2", "bisect.train_steps=40",
                 "bisect.val_episodes=2", "train.checkpoint_every=2", "train.val_every=10",
                 "plan.cem.samples=32", "plan.cem.elites=4", "plan.cem.iterations=2", "eval.budget=10"]
    env = stage_env(tmp_path)
    out = tmp_path / "bisect"
    command = [PYTHON, "-m", "pipelines.bisect", "--env", "pusht", "--data", str(tiny_pusht), "--out",
               str(out), "--no-track", *sets(overrides)]

    def two_trials_training() -> bool:
        return sum(checkpoint_step(p) >= 4 for p in out.glob("trials/*/train/checkpoints/last.pt")) >= 2

    stray = strays(kill_midway(command, tmp_path, env, two_trials_training, "parallel bisect"), settle=20)
    print(f"parallel bisect killed: stray processes {stray}")
    assert stray == [], f"SIGKILL of pipelines.bisect left processes running (killed now): {stray}"
    checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/train/checkpoints/*")}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/train/checkpoints/*")} == checkpoints

    stdout = run(command, tmp_path, env)
    assert "after 3 trials (0 cached)" in stdout
    assert leftovers(out) == [] and len(list(out.glob("trials/*/result.json"))) == 3


# ------------------------------------------------------------------------- concurrent MLflow writers


def expected_metrics(writer: int, step: int) -> dict[str, float]:
    """What writer `writer` logs at `step` of its training-style run."""
    return {"train/loss": writer + step / 1000, "lr": step * 1e-5, "clips_per_s": float(step)}


def log_concurrently(index: int, steps: int, start: Any, result: str) -> None:
    """One writer of the stress test: a training-style run (`RunTracker`, `steps` logged steps of 3 metrics
    each) and a λ-search-style child run (`create_run` + `log_to_run`, `steps` values), all through
    lewm.tracking; writes {"runs": [...]} or {"error": traceback} to `result`."""
    try:
        from lewm.config import load_params
        from lewm.tracking import RunTracker, create_run, end_run, log_to_run

        cfg = load_params().tracking
        start.wait(timeout=120)  # every writer opens the fresh store at the same moment
        tracker = RunTracker(cfg, run_name=f"writer-{index}", tags={"writer": str(index)})
        run_id = tracker.start()
        tracker.log_params({"writer": index, "nested": {"steps": steps}})
        for step in range(1, steps + 1):
            tracker.log_metrics(expected_metrics(index, step), step)
        tracker.finish()
        child = create_run(cfg, f"child-{index}", {"writer": str(index)}, {"writer": index})
        for step in range(1, steps + 1):
            log_to_run(child, {"val/score": index * 1000 + step}, step=step)
        end_run(child, "FINISHED")
        Path(result).write_text(json.dumps({"runs": [run_id, child]}))
    except BaseException as exc:
        Path(result).write_text(json.dumps({"error": "".join(traceback.format_exception(exc))[-4000:]}))
        raise


@pytest.mark.parametrize("writers, steps", [pytest.param(2, 10, id="2x10"),
                                            pytest.param(4, 200, id="4x200", marks=pytest.mark.slow)])
def test_concurrent_writers_to_a_fresh_sqlite_store_lose_nothing(tmp_path, monkeypatch, writers, steps):
    """`writers` processes open one fresh SQLite store at the same moment (the project's default URI form)
    and each logs a run of `steps` × 3 metrics and a child run of `steps` values: no process fails (before
    lewm.tracking.store_lock, 3 of 4 died creating the schema together) and every value is in the store."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LEWM_PROJECT_ROOT", str(tmp_path))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers)
    results = [tmp_path / f"writer-{i}.json" for i in range(writers)]
    processes = [context.Process(target=log_concurrently, args=(i, steps, start, str(results[i])))
                 for i in range(writers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=900)
    seconds = time.perf_counter() - started
    outcomes = [json.loads(p.read_text()) if p.is_file() else {"error": "no result"} for p in results]
    errors = [outcome["error"] for outcome in outcomes if "error" in outcome]
    print(f"{writers} writers × {steps} steps (3 metrics + 1 child value each): {seconds:.1f} s, "
          f"{len(errors)} failed")
    assert errors == [], errors[0]
    assert all(process.exitcode == 0 for process in processes)

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(load_experiment())
    assert len(client.search_runs([experiment.experiment_id], max_results=1000)) == 2 * writers
    for index, outcome in enumerate(outcomes):
        run_id, child = outcome["runs"]
        assert client.get_run(run_id).info.status == client.get_run(child).info.status == "FINISHED"
        assert client.get_run(run_id).data.params["writer"] == str(index)
        for key in expected_metrics(index, 1):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            expected = [(s, pytest.approx(expected_metrics(index, s)[key])) for s in range(1, steps + 1)]
            assert history == expected, key
        history = sorted((m.step, m.value) for m in client.get_metric_history(child, "val/score"))
        assert history == [(s, index * 1000 + s) for s in range(1, steps + 1)]


def load_experiment() -> str:
    from lewm.config import load_params

    return load_params().tracking.experiment


@pytest.mark.slow
def test_parallel_bisection_trials_log_to_one_store(tiny_pusht, tiny_model, prefect_harness, tmp_path,
                                                    monkeypatch):
    """`bisect.parallel=2`, tracked: two trial processes at once write child runs to one fresh SQLite store;
    the parent and all three child runs finish, each with its complete training curve and planning
    result."""
    import mlflow

    from pipelines.bisect import bisect_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LEWM_PROJECT_ROOT", str(tmp_path))
    overrides = [*tiny_model, "bisect.trials=3", "bisect.train_steps=6", "bisect.val_episodes=2",
                 "bisect.parallel=2", "train.log_every=1", "train.val_every=3", "plan.cem.samples=8",
                 "plan.cem.elites=2", "plan.cem.iterations=2", "plan.horizon=2", "plan.receding=2",
                 "eval.budget=6", "eval.goal_offset=10", "tracking.experiment=parallel-bisect",
                 "bisect.min_emb_std=0.0", "bisect.min_effective_rank_fraction=0.0"]
    summary = bisect_flow("pusht", overrides=overrides, data_dir=str(tiny_pusht),
                          out_dir=str(tmp_path / "out"))
    table = pd.read_parquet(summary["table"])
    assert len(table) == 3 and table["run_id"].notna().all()

    client = mlflow.MlflowClient(uri)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    for run_id in table["run_id"]:
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
        assert [m.step for m in client.get_metric_history(run_id, "train/total_loss")] == list(range(1, 7))
        assert "val_plan/reference.success_rate" in child.data.metrics
