"""Shared fixtures. Each is opt-in (requested by name), so tests that do not need them pay nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TINY_MODEL = [
    "model.lewm.encoder_depth=1", "model.lewm.encoder_dim=32", "model.lewm.encoder_heads=2",
    "model.lewm.patch_size=16", "model.lewm.embed_dim=16", "model.lewm.projector_hidden=32",
    "model.lewm.predictor_depth=1", "model.lewm.predictor_heads=2", "model.lewm.predictor_head_dim=8",
    "model.lewm.predictor_mlp_dim=32", "model.lewm.sigreg_projections=32",
    "train.batch_size=8", "train.val_batches=1",
]


def pusht_data_config(**changes: Any) -> Any:
    """A `DataConfig` for small test datasets: params.yaml's `data.pusht` (the dataclasses hold no
    defaults of their own) with the expert at its own default speeds, one worker, and `changes`."""
    from lewm.config import load_params

    base = dataclasses.replace(load_params().data["pusht"], policy_kwargs={}, workers=1)
    return dataclasses.replace(base, **changes)


@pytest.fixture
def tiny_model() -> list[str]:
    """Parameter overrides for a model that trains in a fraction of a second per step on 32 px frames."""
    return list(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_model_config():
    """The same tiny architecture as a ModelConfig (`name` + `settings`), for tests that build models or
    checkpoints directly."""
    from lewm.config import load_params

    return load_params(overrides=TINY_MODEL).model


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point MLflow at a fresh SQLite database (and its artifacts at a temp directory) for the session,
    so tests never write into the project's mlflow.db. Yields the tracking URI."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("LEWM_PROJECT_ROOT", str(root))  # lewm.tracking puts artifacts under <root>/mlartifacts
        for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
            patch.setenv(key, "true")
        yield uri


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throw-away Prefect API (temporary database) shared by the session's flow tests (≈8 s, once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def tiny_pusht(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Push-T dataset (10 episodes of 40 steps at 32 px; 2 val and 1 test episode), made once."""
    from lewm.data.generate import generate_dataset

    cfg = pusht_data_config(episodes=10, max_steps=40, image_size=32, seed=1, val_fraction=0.2,
                            test_fraction=0.1)
    return generate_dataset("pusht", cfg, tmp_path_factory.mktemp("data") / "pusht", progress=False)


@contextlib.contextmanager
def background(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`args` as a background process in its own process group for the duration of the block; then the
    whole group (servers start workers, `serve` starts flow-run processes) is terminated, and killed if
    still there after 30 s, whatever happened in the block. SIGTERM, not Ctrl-C: a process started in the
    background by a non-interactive shell ignores SIGINT, and so do its children."""
    with log.open("w") as out:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, and a stuck leader
            process.wait(timeout=10)
