"""Planning success and probe quality against training compute, and the compute the targets would need.

    .venv/bin/python bench/compute_curve.py --env pusht --point 1000=DIR --point 3000=runs/pusht ...
        [--out runs/pusht/compute_curve] [--track]

Each point is a training length and a directory holding that model's stage outputs in the pipeline's layout
(`train/`, `plan/`, `probe/` and optionally `imagine/` metrics.json, e.g. `runs/pusht` for the default
model, or the `--out` directories of `pipelines.train/plan/probe --out`). Every point must come from the
same data and params except the training length, and be planned on the same test manifest.

Fits, each over log10(steps) by least squares (with three points they are trends, not laws):
- success rate per predicate: logit(p) linear (p clipped to [0.5/n, 1 − 0.5/n]);
- final block position error relative to the zero-action policy: linear;
- probe r (linear probes): log(1 − r) linear, i.e. the unexplained part shrinking as a power of steps;
and solves each for its target (issue 13: reference ≥ 50%, block ≥ 70%, error ≤ 0.5× zero, probes ≥ 0.97 /
block angle ≥ 0.9), reported in steps and in hours at the fastest training rate measured among the points
(another job on the machine only slows a run down). A target whose trend does not improve with steps is
reported as not reachable by steps alone (inf).

Writes <out>/curve.json (points and fits) and <out>/points.parquet; with --track, an MLflow run
`compute-curve-<env>` with each point's metrics logged at step = training steps and the fits.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lewm.io import atomic_file, write_json

SUCCESS_TARGETS = {"reference": 0.5, "block": 0.7}
ERROR_TARGET = 0.5  # final block position error ≤ half the zero-action policy's
PROBE_TARGETS = {"agent_xy": 0.97, "block_xy": 0.97, "block_angle": 0.9}
MAX_DECADES = 15  # beyond 1e15 steps a trend is reported as not reaching its target (inf)


def read_point(steps: int, root: Path) -> dict[str, float]:
    """One point's flat metrics: `train.*`, `plan.*`, `probe.*`, `imagine.*` (if present)."""
    point: dict[str, float] = {"steps": steps}
    for stage in ("train", "plan", "probe", "imagine"):
        path = root / stage / "metrics.json"
        if not path.is_file():
            if stage == "imagine":
                continue
            raise SystemExit(f"error: point {steps}: no {path}")
        point.update({f"{stage}.{key}": value for key, value in json.loads(path.read_text()).items()})
    return point


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares intercept and slope of y over x."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def steps_for(intercept: float, slope: float, target: float, improving: int) -> float:
    """Steps at which the fitted line reaches `target` in its own space; inf if the trend does not move
    toward it (`improving`: +1 when larger is better, −1 when smaller is better)."""
    if slope * improving <= 1e-9:
        return math.inf
    decades = (target - intercept) / slope
    return float(10**decades) if decades < MAX_DECADES else math.inf


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def fit_curve(points: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The trends and the steps each target needs (module docstring)."""
    x = np.log10(points["steps"].to_numpy(float))
    fits = {}
    for predicate, target in SUCCESS_TARGETS.items():
        n = points[f"plan.lewm.{predicate}.n"].to_numpy(float)
        p = np.clip(points[f"plan.lewm.{predicate}.success_rate"].to_numpy(float), 0.5 / n, 1 - 0.5 / n)
        intercept, slope = line_fit(x, logit(p))
        needed = steps_for(intercept, slope, float(logit(np.float64(target))), 1)
        fits[f"success.{predicate}"] = {"target": target, "slope_per_decade": slope, "steps": needed}
    intercept, slope = line_fit(x, points["plan.lewm.final_block_pos_error_vs_zero"].to_numpy(float))
    fits["final_block_pos_error_vs_zero"] = {"target": ERROR_TARGET, "slope_per_decade": slope,
                                             "steps": steps_for(intercept, slope, ERROR_TARGET, -1)}
    for quantity, target in PROBE_TARGETS.items():
        r = points[f"probe.trained.linear.{quantity}.r"].to_numpy(float)
        intercept, slope = line_fit(x, np.log(1 - r))
        fits[f"probe.{quantity}"] = {"target": target, "slope_per_decade": slope,
                                     "steps": steps_for(intercept, slope, math.log(1 - target), -1)}
    seconds_per_step = (points["train.train_seconds"] / points["steps"]).min()  # contention only slows
    for fit in fits.values():
        fit["train_hours_at_measured_rate"] = fit["steps"] * seconds_per_step / 3600
    return fits


COLUMNS = {
    "steps": "steps", "train.train_seconds": "train s", "train.val_pred_loss": "val pred",
    "plan.lewm.reference.success_rate": "reference", "plan.lewm.block.success_rate": "block",
    "plan.lewm.final_block_pos_error_vs_zero": "final px ×zero",
    "plan.lewm.final_block_angle_error_vs_zero": "final rad ×zero",
    "probe.trained.linear.agent_xy.r": "r agent", "probe.trained.linear.block_xy.r": "r block",
    "probe.trained.linear.block_angle.r": "r angle",
    "imagine.block_xy.imagined.k5": "imag block px k5", "imagine.block_xy.copy.k5": "copy block px k5",
    "imagine.distance_spearman.random_pairs": "ρ random pairs",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="pusht")
    parser.add_argument("--point", action="append", required=True, metavar="STEPS=DIR")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<env>/compute_curve)")
    parser.add_argument("--track", action="store_true", help="log an MLflow run compute-curve-<env>")
    args = parser.parse_args()
    points = []
    for spec in args.point:
        steps, sep, root = spec.partition("=")
        if not sep or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"error: --point {spec!r}: expected STEPS=DIR with STEPS a positive integer")
        points.append(read_point(int(steps), Path(root)))
    if len(points) < 2:
        raise SystemExit("error: a trend needs at least two --point values")
    table = pd.DataFrame(points).sort_values("steps", ignore_index=True)
    fits = fit_curve(table)

    shown = table[[c for c in COLUMNS if c in table]].rename(columns=COLUMNS)
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\ntarget                              slope/decade   steps needed   train h at measured rate")
    for name, fit in fits.items():
        print(f"{name:<36}{fit['slope_per_decade']:>+12.3f}{fit['steps']:>15.3g}"
              f"{fit['train_hours_at_measured_rate']:>20.3g}")

    out = Path(args.out or f"runs/{args.env}/compute_curve")
    out.mkdir(parents=True, exist_ok=True)
    finite_fits = {name: {key: value if math.isfinite(value) else None for key, value in fit.items()}
                   for name, fit in fits.items()}  # null steps: the trend does not reach the target
    write_json(out / "curve.json", {"env": args.env, "points": table.to_dict(orient="records"),
                                    "fits": finite_fits})
    with atomic_file(out / "points.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    if args.track:
        from lewm.config import load_params
        from lewm.tracking import create_run, end_run, log_to_run

        run_id = create_run(load_params().tracking, f"compute-curve-{args.env}", {"kind": "compute-curve"},
                            {"env": args.env, "points": ",".join(args.point)})
        for point in table.to_dict(orient="records"):
            log_to_run(run_id, {k: v for k, v in point.items() if k != "steps"}, step=int(point["steps"]))
        log_to_run(run_id, {f"fit.{name}.{key}": value for name, fit in fits.items()
                            for key, value in fit.items()}, [out / "curve.json", out / "points.parquet"])
        end_run(run_id, "FINISHED")
        print(f"MLflow run {run_id}")


if __name__ == "__main__":
    main()
