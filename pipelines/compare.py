"""Stages `compare_curves@<env>`, `compare_solvers@<env>` and `compare@<env>`: world models and solvers
compared on the same test pairs (reference §8.5, §12).

    python -m pipelines.compare curves --env pusht    # training curves of compare.curve_models over seeds
    python -m pipelines.compare solvers --env pusht   # every solver in compare.solvers on the trained model
    python -m pipelines.compare plan --env pusht --model pldm  # a trained baseline on compare.pairs pairs
    python -m pipelines.compare report --env pusht    # the comparison report, logged to MLflow
    python -m pipelines.compare all --env pusht       # everything above, baselines first (the Prefect step)

The baselines (`compare.models`) are trained by the ordinary train stage (`train_baseline@<env>-<model>` in
dvc.yaml, `--set model.name=<model>`) and planned by the plan stage's function (`plan_baseline@<env>-<model>`,
on `compare.pairs` pairs of the profile in use), with the world's own train params, so every model gets the
same data, steps and schedule. The report puts side by side, on the first `compare.pairs` test pairs: success
per predicate with Wilson intervals and the random/zero floors for every model; time per solve of every model
at the same solver settings, measured here in one process, with the ratio to `model.name`; the smoothness
statistic of the training curves over seeds; success against time per solve for every solver. Outputs go to
runs/<env>/compare/ (Parquet tables, PNG plots, metrics.json) and to an MLflow run `compare-<env>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lewm.comparison import (
    curve_rows,
    method_table,
    plot_curves,
    plot_success_vs_time,
    smoothness,
    smoothness_summary,
    time_solves,
)
from lewm.config import Params, load_params, section_mapping
from lewm.envs import get_world
from lewm.evaluation import evaluate_model, read_manifest
from lewm.io import atomic_file, write_json
from lewm.tracking import create_run, end_run, log_to_run
from pipelines._cli import base_parser, run_cli
from pipelines._stage import load_model_and_data
from pipelines.plan import describe, plan_stage
from pipelines.train import train_stage


def compare_dir(env: str) -> Path:
    return Path("runs") / env / "compare"


def baseline_dir(env: str, model: str) -> Path:
    """Where `train_baseline@<env>-<model>` and `plan_baseline@<env>-<model>` write."""
    return Path("runs") / env / "baselines" / model


def write_table(table: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        table.to_parquet(tmp, index=False)


# ------------------------------------------------------------------------------------------------- curves


def curves_stage(env: str, params_path: str | None = None, overrides: list[str] | None = None) -> Path:
    """Train every model of `compare.curve_models` for `compare.curve_steps` steps under every seed of
    `compare.curve_seeds` (resuming interrupted runs), and gather their training losses into
    runs/<env>/compare/curves.parquet."""
    cfg = load_params(params_path, overrides, env).compare
    runs_dir = compare_dir(env) / "curve_runs"
    tables = []
    for model in cfg.curve_models:
        for seed in cfg.curve_seeds:
            out_dir = runs_dir / f"{model}-seed{seed}"
            run_overrides = [*(overrides or []), f"model.name={model}", f"train.seed={seed}",
                             f"train.max_steps={cfg.curve_steps}", "train.plan_eval_every=0"]
            outcome = train_stage(env, params_path, run_overrides, out_dir=out_dir, track=False)
            print(f"curves: {model} seed {seed}: {outcome.step} steps in "
                  f"{outcome.metrics['train_seconds']:.0f} s", flush=True)
            tables.append(curve_rows(pd.read_csv(out_dir / "train_history.csv"), model, seed))
    path = compare_dir(env) / "curves.parquet"
    write_table(pd.concat(tables, ignore_index=True), path)
    return path


# ---------------------------------------------------------------------------------------------- baselines


def baseline_plan_stage(env: str, model: str, params_path: str | None = None,
                        overrides: list[str] | None = None, progress: bool = True) -> dict[str, float]:
    """Plan with the trained baseline `model` on the first `compare.pairs` test pairs, into
    runs/<env>/baselines/<model>/plan (the plan stage, logged to the baseline's MLflow run)."""
    cfg = load_params(params_path, overrides, env).compare
    if model not in cfg.models:
        raise ValueError(f"--model {model}: not one of compare.models ({', '.join(cfg.models)})")
    out = baseline_dir(env, model)
    return plan_stage(env, params_path, overrides, train_dir=out / "train", out_dir=out / "plan",
                      pairs=cfg.pairs, progress=progress)


# ------------------------------------------------------------------------------------------------ solvers


def solvers_stage(env: str, params_path: str | None = None, overrides: list[str] | None = None) -> Path:
    """Plan with the trained `model.name` and every solver of `compare.solvers` on the first
    `compare.pairs` test pairs (the floors once, beside them); write runs/<env>/compare/solvers.parquet,
    one row per solver (or floor) × pair, the method column naming the solver."""
    params = load_params(params_path, overrides, env)
    loaded, store = load_model_and_data(env, params, Path("runs") / env / "train" / "model.pt",
                                        Path("data") / env)
    manifest = read_manifest(Path("runs") / env / "manifests" / "test.parquet")
    tables = []
    for index, solver in enumerate(params.compare.solvers):
        plan_cfg = load_params(params_path, [*(overrides or []), f"plan.solver={solver}"], env).plan
        rows, summary = evaluate_model(loaded.model, loaded.meta, manifest, store, plan_cfg, params.eval,
                                       episodes=params.compare.pairs,
                                       baselines=("random", "zero") if index == 0 else ())
        rows["method"] = rows["method"].replace(loaded.meta.model, solver)
        tables.append(rows)
        headline = f"{loaded.meta.model}.{get_world(env).headline}"
        print(f"solvers: {solver}: {100 * summary[f'{headline}.success_rate']:.1f}% "
              f"({summary[f'{loaded.meta.model}.plan_time_median_s']:.2f} s per solve)", flush=True)
    path = compare_dir(env) / "solvers.parquet"
    write_table(pd.concat(tables, ignore_index=True), path)
    return path


# ------------------------------------------------------------------------------------------------- report


def model_episodes(env: str, params: Params) -> pd.DataFrame:
    """Episodes of `model.name` and the floors (plan stage) and of every baseline (plan_baseline stages) on
    the first `compare.pairs` test pairs."""
    pairs = params.compare.pairs
    main = pd.read_parquet(Path("runs") / env / "plan" / "episodes.parquet")
    first_pairs = read_manifest(Path("runs") / env / "manifests" / "test.parquet")["pair"].iloc[:pairs]
    tables = [main[main["pair"].isin(first_pairs)]]
    for model in params.compare.models:
        path = baseline_dir(env, model) / "plan" / "episodes.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: run `dvc repro plan_baseline@{env}-{model}` first")
        rows = pd.read_parquet(path)
        tables.append(rows[rows["method"] == model])
    episodes = pd.concat(tables, ignore_index=True)
    counts = episodes.groupby("method")["pair"].nunique()
    if (counts != len(first_pairs)).any():
        raise ValueError(f"the models were not evaluated on the same {len(first_pairs)} pairs: "
                         f"{counts.to_dict()} (re-run the plan stages with --pairs {pairs})")
    return episodes


def timing_table(env: str, params: Params) -> pd.DataFrame:
    """Time per solve of `model.name` and of every baseline, at the same solver settings, in this process:
    median and p90 over `compare.timing_pairs` solves, and the ratio of medians to `model.name`'s."""
    manifest = read_manifest(Path("runs") / env / "manifests" / "test.parquet")
    models = {params.model.name: Path("runs") / env / "train" / "model.pt"}
    models.update({m: baseline_dir(env, m) / "train" / "model.pt" for m in params.compare.models})
    rows = []
    for name, path in models.items():
        loaded, store = load_model_and_data(env, params, path, Path("data") / env)
        pairs = manifest.iloc[: params.compare.timing_pairs]
        frames = [(np.asarray(store.frames[s]), np.asarray(store.frames[g]))
                  for s, g in zip(pairs["start_row"], pairs["goal_row"], strict=True)]
        times = time_solves(loaded.model, loaded.meta, params.plan, frames)
        with torch.inference_mode():
            first = torch.from_numpy(np.ascontiguousarray(frames[0][0].transpose(2, 0, 1)))[None]
            latent = tuple(loaded.model.encode(first).shape[1:])
        rows.append({"model": name, "median_s": float(np.median(times)),
                     "p90_s": float(np.percentile(times, 90)), "solves": len(times),
                     "latent_shape": "x".join(map(str, latent)),
                     "parameters": loaded.model.num_parameters()["total"]})
        print(f"timing: {name}: median {rows[-1]['median_s']:.2f} s per solve", flush=True)
    table = pd.DataFrame(rows)
    table["ratio_to_" + params.model.name] = table["median_s"] / table["median_s"].iloc[0]
    return table


def report_stage(env: str, params_path: str | None = None, overrides: list[str] | None = None,
                 track: bool = True) -> dict[str, float]:
    """Assemble the comparison (see the module docstring) into runs/<env>/compare/ and MLflow."""
    params = load_params(params_path, overrides, env)
    cfg, out = params.compare, compare_dir(env)
    for name in ("curves.parquet", "solvers.parquet"):
        if not (out / name).is_file():
            stage = "compare_curves" if name == "curves.parquet" else "compare_solvers"
            raise FileNotFoundError(f"{out / name}: run `dvc repro {stage}@{env}` first")
    models = method_table(model_episodes(env, params), label="model")
    solvers = method_table(pd.read_parquet(out / "solvers.parquet"), label="solver")
    curves = pd.read_parquet(out / "curves.parquet")
    per_seed = smoothness(curves, cfg.smoothing_window)
    summary = smoothness_summary(per_seed)
    timing = timing_table(env, params)
    tables = {"models": models, "solvers_summary": solvers, "smoothness": per_seed,
              "smoothness_summary": summary, "timing": timing}
    for name, table in tables.items():
        write_table(table, out / f"{name}.parquet")
    plot_curves(curves, out / "curves.png")
    plot_success_vs_time(solvers, "solver", out / "solvers.png")
    metrics = flat_metrics(models, solvers, summary, timing, params.model.name)
    write_json(out / "metrics.json", metrics)
    if track:
        run_id = create_run(params.tracking, f"compare-{env}", {"env": env, "stage": "compare"},
                            {"compare": section_mapping(cfg), "plan": {"solver": params.plan.solver}})
        artifacts = [out / f"{name}.parquet" for name in tables] + [
            out / "curves.png", out / "solvers.png", out / "metrics.json", out / "curves.parquet"]
        log_to_run(run_id, metrics, artifacts, artifact_path="compare")
        end_run(run_id, "FINISHED")
    return metrics


def flat_metrics(models: pd.DataFrame, solvers: pd.DataFrame, smooth: pd.DataFrame, timing: pd.DataFrame,
                 reference: str) -> dict[str, float]:
    """The report's headline numbers as flat `metrics.json` keys."""
    metrics: dict[str, float] = {}
    for label, table in (("model", models), ("solver", solvers)):
        for row in table.to_dict("records"):
            key = f"{label}s.{row[label]}.{row['predicate']}"
            metrics.update({f"{key}.{name}": row[name]
                            for name in ("success_rate", "ci_low", "ci_high", "n")})
            metrics[f"{label}s.{row[label]}.plan_time_median_s"] = row["plan_time_median_s"]
    for row in timing.to_dict("records"):
        metrics[f"timing.{row['model']}.median_s"] = row["median_s"]
        metrics[f"timing.{row['model']}.ratio_to_{reference}"] = row[f"ratio_to_{reference}"]
    for row in smooth.to_dict("records"):
        metrics[f"smoothness.{row['model']}.{row['term']}.mean"] = row["mean"]
        metrics[f"smoothness.{row['model']}.{row['term']}.std"] = row["std"]
    return {key: float(value) for key, value in metrics.items()}


def compare_stage(env: str, params_path: str | None = None,
                  overrides: list[str] | None = None) -> dict[str, float]:
    """The whole comparison of `env` in the order of the DVC stages: every baseline trained (resuming) and
    planned, then the curves, the solvers and the report (the full Prefect flow's `compare` step)."""
    params = load_params(params_path, overrides, env)
    for model in params.compare.models:
        out = baseline_dir(env, model)
        train_stage(env, params_path, [*(overrides or []), f"model.name={model}"], out_dir=out / "train")
        baseline_plan_stage(env, model, params_path, overrides, progress=False)
    curves_stage(env, params_path, overrides)
    solvers_stage(env, params_path, overrides)
    return report_stage(env, params_path, overrides)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("part", choices=("curves", "plan", "solvers", "report", "all"))
    parser.add_argument("--env", required=True)
    parser.add_argument("--model", default=None, help="plan: the baseline (one of compare.models)")
    parser.add_argument("--no-track", action="store_true", help="report: do not log to MLflow")
    args = parser.parse_args()
    if args.part == "curves":
        print(f"wrote {curves_stage(args.env, args.params, args.overrides)}")
    elif args.part == "plan":
        if args.model is None:
            raise ValueError("compare plan needs --model <baseline>")
        summary = baseline_plan_stage(args.env, args.model, args.params, args.overrides)
        print(describe(summary))
    elif args.part == "solvers":
        print(f"wrote {solvers_stage(args.env, args.params, args.overrides)}")
    else:
        if args.part == "all":
            metrics = compare_stage(args.env, args.params, args.overrides)
        else:
            metrics = report_stage(args.env, args.params, args.overrides, track=not args.no_track)
        print(f"wrote {compare_dir(args.env)} ({len(metrics)} metrics)")


if __name__ == "__main__":
    run_cli(main)
