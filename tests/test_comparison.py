"""The comparison's statistics and tables (lewm/comparison.py, pipelines/compare.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lewm.comparison import curve_rows, method_table, rising_fraction, smoothness, smoothness_summary
from pipelines.compare import flat_metrics


def test_rising_fraction_of_smooth_and_noisy_curves():
    steps = np.arange(1, 101)
    assert rising_fraction(1.0 / steps, window=1) == 0.0  # monotone decrease
    assert rising_fraction(steps.astype(float), window=3) == 1.0
    zigzag = 1.0 / steps + 0.5 * (-1.0) ** steps
    assert rising_fraction(zigzag, window=1) == pytest.approx(0.5, abs=0.02)
    assert rising_fraction(zigzag, window=2) == 0.0  # the moving average removes a period-2 wiggle
    noisy = np.exp(-steps / 30) + np.random.default_rng(0).normal(0, 0.05, len(steps))
    assert 0.2 < rising_fraction(noisy, window=1) < 0.6
    assert math.isnan(rising_fraction([1.0, 2.0], window=2))
    with pytest.raises(ValueError, match="window"):
        rising_fraction([1.0, 2.0, 3.0], window=0)


def test_curves_long_format_and_smoothness_over_seeds():
    history = pd.DataFrame({"step": [10, 20, 30, 40], "train/pred_loss": [4.0, 3.0, 2.0, 1.0],
                            "train/total_loss": [4.0, 5.0, 3.0, 6.0], "train/grad_norm": [1, 1, 1, 1],
                            "lr": [0.1] * 4})
    curves = pd.concat([curve_rows(history, "lewm", seed) for seed in (0, 1)], ignore_index=True)
    assert set(curves["term"]) == {"pred", "total"}  # losses only, prefix and suffix stripped
    assert list(curves.columns) == ["model", "seed", "step", "term", "value"]
    per_seed = smoothness(curves, window=1)
    pred = per_seed[per_seed["term"] == "pred"]["rising_fraction"]
    total = per_seed[per_seed["term"] == "total"]["rising_fraction"]
    assert (pred == 0.0).all() and total.tolist() == pytest.approx([2 / 3, 2 / 3])
    summary = smoothness_summary(per_seed).set_index("term")
    assert summary.loc["total", "mean"] == pytest.approx(2 / 3) and summary.loc["total", "seeds"] == 2


def episodes_table() -> pd.DataFrame:
    """Two methods on four pairs: `a` succeeds on 3 (pair 0 starts satisfied), `b` on 1."""
    rows = []
    for method, successes in (("a", [True, True, True, False]), ("b", [False, True, False, False])):
        for pair, success in enumerate(successes):
            rows.append({"eval_seed": 0, "pair": pair, "method": method, "success_ok": success,
                         "steps_to_success_ok": 3.0 if success else float("nan"),
                         "start_satisfied_ok": pair == 0 and method == "a",
                         "final_error": 1.0 if success else 5.0, "start_error": 4.0, "best_error": 1.0,
                         "plan_times_s": [0.5, 1.5] if method == "a" else []})
    return pd.DataFrame(rows)


def test_method_table_has_one_row_per_method_and_predicate():
    table = method_table(episodes_table(), label="model").set_index("model")
    assert table.loc["a", "n"] == 3 and table.loc["a", "excluded"] == 1
    assert table.loc["a", "success_rate"] == pytest.approx(2 / 3)
    assert table.loc["b", "success_rate"] == pytest.approx(0.25)
    assert table.loc["a", "ci_low"] < 2 / 3 < table.loc["a", "ci_high"]
    assert table.loc["a", "plan_time_median_s"] == 1.0 and math.isnan(table.loc["b", "plan_time_median_s"])
    assert table.loc["b", "final_error_mean"] == pytest.approx(4.0)
    assert table.loc["a", "final_error_vs_start"] == pytest.approx(2.0 / 4.0)
    assert "final_error_vs_zero" not in table  # no zero-action policy in the table


def test_flat_metrics_name_every_headline_number():
    models = method_table(episodes_table(), label="model")
    solvers = method_table(episodes_table(), label="solver")
    smooth = pd.DataFrame([{"model": "a", "term": "pred", "mean": 0.1, "std": 0.0, "seeds": 3}])
    timing = pd.DataFrame([{"model": "a", "median_s": 1.0, "ratio_to_a": 1.0},
                           {"model": "b", "median_s": 30.0, "ratio_to_a": 30.0}])
    metrics = flat_metrics(models, solvers, smooth, timing, "a")
    assert metrics["models.a.ok.success_rate"] == pytest.approx(2 / 3)
    assert metrics["solvers.b.ok.n"] == 4.0
    assert metrics["timing.b.ratio_to_a"] == 30.0 and metrics["smoothness.a.pred.mean"] == 0.1
    assert all(isinstance(v, float) for v in metrics.values())
