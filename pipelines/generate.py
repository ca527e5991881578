"""Stage `generate@<env>`: roll out the data-collection policy and write the offline dataset.

    python -m pipelines.generate --env pusht [--set data.pusht.episodes=10] [--out data/pusht]

Writes data/<env>/ (manifest.json, frames.npy, steps.parquet, episodes.parquet) atomically, and the run's
figures (seconds, transitions/s, workers) to runs/<env>/generate/metrics.json: the dataset holds nothing
about the run, so the same parameters give the same DVC hash on any machine.

The CLI calls the plain function and never imports Prefect (≈0.8 s, paid again by every spawned
generation worker, which re-imports this module). `generate_flow`, the Prefect flow, is built on first
access (`from pipelines.generate import generate_flow`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lewm.config import load_params
from lewm.data.generate import generate_dataset
from lewm.io import write_json
from pipelines._cli import base_parser, run_cli


def generate_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    metrics_path: str | Path | None = None,
) -> Path:
    """Generate data/<env> (or `out_dir`) from the `data.<env>` section of the parameters; write the run's
    figures to `metrics_path` (default runs/<env>/generate/metrics.json, none when `out_dir` is given)."""
    params = load_params(params_path, overrides, env)
    cfg = params.data_for(env)
    started = time.perf_counter()
    path = generate_dataset(env, cfg, out_dir or Path("data") / env, progress=progress)
    seconds = time.perf_counter() - started
    if metrics_path is None and out_dir is None:
        metrics_path = Path("runs") / env / "generate" / "metrics.json"
    if metrics_path is not None:
        steps = json.loads((path / "manifest.json").read_text())["steps"]
        write_json(metrics_path, {"generation_seconds": round(seconds, 3), "workers": cfg.workers,
                                  "transitions_per_s": steps / seconds})
    return path


def summary(path: Path) -> str:
    """One line describing the dataset at `path`."""
    m = json.loads((path / "manifest.json").read_text())
    sizes = "/".join(str(len(m["splits"][s])) for s in ("train", "val", "test"))
    return (
        f"generated {m['episodes']} {m['env']} episodes ({m['frames']} frames, {m['image_size']} px, "
        f"train/val/test {sizes}, contact in {m['contact_fraction']:.0%} of steps) -> {path}"
    )


def _build_flow() -> Any:
    """The Prefect flow `generate_flow(env, params_path=None, overrides=None) -> str` (dataset path)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow, task

    @task(name="generate-dataset")
    def generate_task(env: str, params_path: str | None, overrides: list[str] | None) -> str:
        return str(generate_stage(env, params_path, overrides, progress=False))

    @flow(name="generate")
    def generate_flow(
        env: str = "pusht", params_path: str | None = None, overrides: list[str] | None = None
    ) -> str:
        """Prefect flow around the generation stage (same function the CLI calls)."""
        return generate_task(env, params_path, overrides)

    return generate_flow


def __getattr__(name: str) -> Any:
    if name == "generate_flow":
        globals()["generate_flow"] = _build_flow()
        return globals()["generate_flow"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--out", default=None, help="dataset directory (default: data/<env>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    path = generate_stage(args.env, args.params, args.overrides, args.out, progress=not args.no_progress)
    print(summary(path))


if __name__ == "__main__":
    run_cli(main)
