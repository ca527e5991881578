"""Stage `plan@<env>`: planning evaluation of the trained model on the held-out test manifest.

    python -m pipelines.plan --env pusht [--set plan.cem.iterations=30 --out runs/pusht/plan_it30]

The world model (`model.name`) with the solver (`plan.solver`) in an MPC loop, and the floor baselines
(random, zero), run on exactly the same start/goal pairs. Writes
runs/<env>/plan/{episodes.parquet (one row per eval seed × pair × method), metrics.json, gifs/} and logs
them to the MLflow run of the evaluated model (metrics prefixed `plan/`). GIFs show the observation beside
the goal; when the model has a pixel decoder (the decode stage's `decode/decoder.pt` beside its training
directory, e.g. runs/<env>/decode/decoder.pt, or --decoder), the planner's GIFs add the decoded imagined
rollout of the chosen plan. The decoder is display only: the episodes and metrics are the same without it.
"""

from __future__ import annotations

from pathlib import Path

from lewm.config import PlanConfig, load_params, section_mapping
from lewm.decoder import find_decoder
from lewm.evaluation import evaluate_model, read_manifest
from lewm.io import atomic_dir, atomic_file, write_json
from lewm.runtime import resolve_precision
from lewm.tracking import append_to_run
from pipelines._cli import base_parser, run_cli
from pipelines._stage import add_decoder_options, load_model_and_data, training_run_id


def plan_stage(
    env: str, params_path: str | None = None, overrides: list[str] | None = None,
    train_dir: str | Path | None = None, out_dir: str | Path | None = None, track: bool = True,
    progress: bool = True, pairs: int | None = None, decoder: str | Path | None = None,
    use_decoder: bool = True,
) -> dict[str, float]:
    """Evaluate runs/<env>/train/model.pt on runs/<env>/manifests/test.parquet (or its first `pairs` pairs,
    a uniform subset); return the summary. The GIFs show decoded imagined rollouts when the checkpoint has
    a decoder (`lewm.decoder.find_decoder`: `decoder`, else the decode stage's beside `train_dir`, refused if
    it belongs to another checkpoint; none with `use_decoder` false)."""
    params = load_params(params_path, overrides, env)
    model_path = Path(train_dir or f"runs/{env}/train") / "model.pt"
    out_dir = Path(out_dir or f"runs/{env}/plan")
    loaded, store = load_model_and_data(env, params, model_path, f"data/{env}")
    device = next(loaded.model.parameters()).device
    pixel_decoder = find_decoder(model_path, decoder, use_decoder and params.eval.gifs > 0, device)
    run_id = training_run_id(model_path) if track else None
    manifest = read_manifest(f"runs/{env}/manifests/test.parquet")
    gif_dir = out_dir / "gifs"
    # the GIFs appear together, replacing the last run's (an interrupted run leaves none of its own there)
    with atomic_dir(gif_dir) as gif_tmp:
        rows, summary = evaluate_model(loaded.model, loaded.meta, manifest, store, params.plan, params.eval,
                                       episodes=pairs, gif_dir=gif_tmp if params.eval.gifs else None,
                                       progress=progress,
                                       decoder=None if pixel_decoder is None else pixel_decoder.decode_frames)
    summary.update(solver_settings(params.plan))
    summary["bf16"] = float(resolve_precision(device, params.plan.precision) == "bf16")
    with atomic_file(out_dir / "episodes.parquet") as tmp:
        rows.to_parquet(tmp, index=False)
    write_json(out_dir / "metrics.json", summary)
    if run_id is not None:
        artifacts = [out_dir / "episodes.parquet", out_dir / "metrics.json", *sorted(gif_dir.glob("*.gif"))]
        append_to_run(params.tracking, run_id, "plan", summary, artifacts, loaded.step)
    return summary


def solver_settings(plan_cfg: PlanConfig) -> dict[str, float]:
    """The MPC loop's settings (`plan_horizon`, `plan_receding`, `plan_every_step_cost` 1/0) and the solver's
    numeric ones as `<solver>_<key>` (e.g. `cem_iterations`), kept beside the results they produced."""
    return {"plan_horizon": plan_cfg.horizon, "plan_receding": plan_cfg.receding,
            "plan_every_step_cost": float(plan_cfg.cost == "every_step"),
            **{f"{plan_cfg.solver}_{key}": value for key, value in section_mapping(plan_cfg.settings).items()
               if isinstance(value, int | float) and not isinstance(value, bool)}}


def describe(summary: dict[str, float]) -> str:
    """One line per method × predicate in `summary` (success rate, Wilson interval, excluded starts), one
    per method × goal error (start → best → final mean, final against zero's), one per planner's solve
    time."""
    lines = []
    for key in (k.removesuffix(".success_rate") for k in summary if k.endswith(".success_rate")):
        lines.append(
            f"{key}: {100 * summary[f'{key}.success_rate']:.1f}% "
            f"[{100 * summary[f'{key}.ci_low']:.1f}, {100 * summary[f'{key}.ci_high']:.1f}] "
            f"(n={summary[f'{key}.n']:.0f}, excluded {summary[f'{key}.excluded']:.0f})"
        )
    for key in (k.removesuffix("_vs_start") for k in summary if k.endswith("_vs_start") and ".final_" in k):
        method, error = key.split(".final_")
        vs_zero = summary.get(f"{key}_vs_zero", float("nan"))
        lines.append(f"{method} {error}: start {summary[f'{method}.start_{error}_mean']:.3g} → best "
                     f"{summary[f'{method}.best_{error}_mean']:.3g} → final {summary[f'{key}_mean']:.3g} "
                     f"({summary[f'{key}_vs_start']:.2f}× start, {vs_zero:.2f}× zero)")
    for key in (k.removesuffix(".plan_time_median_s") for k in summary if k.endswith(".plan_time_median_s")):
        lines.append(f"{key} time per solve: median {summary[f'{key}.plan_time_median_s']:.2f} s, "
                     f"p90 {summary[f'{key}.plan_time_p90_s']:.2f} s")
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--train-dir", default=None, help="training outputs (default: runs/<env>/train)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<env>/plan)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--pairs", type=int, default=None, help="evaluate only the first N manifest pairs")
    add_decoder_options(parser)
    args = parser.parse_args()
    summary = plan_stage(args.env, args.params, args.overrides, args.train_dir, args.out,
                         track=not args.no_track, pairs=args.pairs, decoder=args.decoder,
                         use_decoder=not args.no_decoder)
    print(describe(summary))


if __name__ == "__main__":
    run_cli(main)
