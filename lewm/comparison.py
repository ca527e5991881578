"""Comparing world models and solvers (reference §8.5, §12): what the seed's comparative claims rest on.

- Training-curve smoothness: `rising_fraction` is the fraction of logged steps at which the moving
  average of a loss rises; a smooth, monotonic curve scores near 0, a noisy one near 0.5. `smoothness`
  gives it per model, seed and loss term, `smoothness_summary` its mean and std over seeds.
- Success per model or solver on the same test pairs: `method_table` turns the per-episode table of
  `lewm.evaluation.evaluate` into one row per method × predicate (rate, Wilson interval, excluded starts,
  final errors, time per solve), the floors included.
- Time per solve at equal solver settings: `time_solves` times full solves (encoding included) of one
  model on the start/goal frames of manifest pairs, in this process, so ratios between models are measured
  under the same conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lewm.checkpoint import ModelMeta
from lewm.config import PlanConfig
from lewm.evaluation import FINAL, summarize
from lewm.planning import LatentMPCAgent
from lewm.plots import save_figure

LOSS_PREFIX = "train/"


def rising_fraction(values: Sequence[float], window: int) -> float:
    """Fraction of consecutive points at which the `window`-point moving average of `values` rises (NaN
    when fewer than two averaged points exist)."""
    if window < 1:
        raise ValueError(f"smoothing window must be ≥ 1, got {window}")
    series = np.asarray(values, dtype=np.float64)
    if len(series) < window + 1:
        return float("nan")
    averaged = np.convolve(series, np.ones(window) / window, mode="valid")
    return float(np.mean(np.diff(averaged) > 0))


def curve_rows(history: pd.DataFrame, model: str, seed: int) -> pd.DataFrame:
    """The loss columns (`train/<term>_loss`) of one training run's history, long format: model, seed,
    step, term, value."""
    columns = [c for c in history.columns if c.startswith(LOSS_PREFIX) and c.endswith("_loss")]
    long = history.melt(id_vars="step", value_vars=columns, var_name="term", value_name="value")
    long["term"] = long["term"].str.removeprefix(LOSS_PREFIX).str.removesuffix("_loss")
    long.insert(0, "seed", seed)
    long.insert(0, "model", model)
    return long


def smoothness(curves: pd.DataFrame, window: int) -> pd.DataFrame:
    """`rising_fraction` of every (model, seed, term) curve in `curves` (the `curve_rows` format)."""
    rows = [
        {"model": model, "seed": seed, "term": term,
         "rising_fraction": rising_fraction(group.sort_values("step")["value"].to_numpy(), window)}
        for (model, seed, term), group in curves.groupby(["model", "seed", "term"], sort=False)
    ]
    return pd.DataFrame(rows)


def smoothness_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds of the rising fraction, per model and term."""
    grouped = per_seed.groupby(["model", "term"], sort=False)["rising_fraction"]
    return grouped.agg(mean="mean", std="std", seeds="count").reset_index()


def method_table(episodes: pd.DataFrame, label: str = "method") -> pd.DataFrame:
    """One row per method × predicate of an evaluation table: success rate, Wilson interval, n, excluded,
    the method's goal progress (mean final errors, against the start and, where the table has the zero
    policy, against zero's) and its median time per solve (NaN for the floors)."""
    metrics = summarize(episodes)
    predicates = [c.removeprefix("success_") for c in episodes.columns if c.startswith("success_")]
    errors = [c for c in episodes.columns if c.startswith(FINAL)]
    rows = []
    for method in episodes["method"].unique():
        shared = {f"{error}{suffix}": metrics[f"{method}.{error}{suffix}"] for error in errors
                  for suffix in ("_mean", "_vs_start", "_vs_zero") if f"{method}.{error}{suffix}" in metrics}
        shared["plan_time_median_s"] = metrics.get(f"{method}.plan_time_median_s", float("nan"))
        for predicate in predicates:
            key = f"{method}.{predicate}"
            rows.append({label: method, "predicate": predicate,
                         **{name: metrics[f"{key}.{name}"]
                            for name in ("success_rate", "ci_low", "ci_high", "n", "excluded")},
                         **shared})
    return pd.DataFrame(rows)


def time_solves(model: Any, meta: ModelMeta, plan_cfg: PlanConfig,
                frame_pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Wall time of one full solve (encoding the frame, planning to the goal) per (start, goal) frame pair,
    after one untimed warm-up solve; the model is left in eval mode."""
    if not frame_pairs:
        raise ValueError("time_solves needs at least one (start, goal) frame pair")
    model.eval()
    times = []
    for index, (start, goal) in enumerate([frame_pairs[0], *frame_pairs]):
        agent = LatentMPCAgent(model, meta, plan_cfg, seed=index)
        agent.start({"pixels": goal})
        agent.act({"pixels": start})
        if index > 0:
            times.append(agent.solve_times[-1])
    return times


def plot_curves(curves: pd.DataFrame, path: str | Path) -> None:
    """Training losses per term over steps: one panel per model, seeds as separate lines."""
    models = list(curves["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = curves[curves["model"] == model]
        for (term, seed), group in rows.groupby(["term", "seed"], sort=False):
            values = group["value"].to_numpy()
            if np.all(values > 0):
                ax.plot(group["step"], values, lw=1, alpha=0.8, label=f"{term} s{seed}")
        ax.set_yscale("log")
        ax.set_title(f"{model}: training losses (seeds as lines)")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_success_vs_time(table: pd.DataFrame, label: str, path: str | Path) -> None:
    """Success (with Wilson intervals) against median time per solve, one panel per predicate."""
    predicates = list(table["predicate"].unique())
    fig, axes = plt.subplots(1, len(predicates), figsize=(5 * len(predicates), 4), squeeze=False)
    for ax, predicate in zip(axes[0], predicates, strict=True):
        rows = table[(table["predicate"] == predicate) & table["plan_time_median_s"].notna()]
        for row in rows.itertuples(index=False):
            rate = 100 * row.success_rate
            ax.errorbar(row.plan_time_median_s, rate, fmt="o",
                        yerr=[[rate - 100 * row.ci_low], [100 * row.ci_high - rate]], capsize=3)
            ax.annotate(getattr(row, label), (row.plan_time_median_s, rate), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("median time per solve (s)")
        ax.set_ylabel(f"success, {predicate} (%)")
        ax.grid(alpha=0.3)
    save_figure(fig, path)
