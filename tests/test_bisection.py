"""λ bisection: the search on synthetic criteria (optimum found within the resolution its budget allows,
deterministic, collapse and ties handled), the trial cache, and one tiny real search end to end."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest

from lewm.bisection import (
    TrialCache,
    TrialResult,
    best_trial,
    bracket,
    next_round,
    search_lambda,
    search_table,
)
from lewm.config import PROJECT_ROOT

LO, HI = 1e-3, 1.0


def peaked(optimum: float, collapse_above: float = math.inf, flat: bool = False):
    """A synthetic trial: success falls off quadratically in log10 λ around `optimum`; the validation
    loss grows with distance too (so ties, when `flat`, are broken towards the optimum)."""
    calls: list[float] = []

    def evaluate(lam: float) -> TrialResult:
        calls.append(lam)
        distance = abs(math.log10(lam) - math.log10(optimum))
        success = 0.5 if flat else max(0.0, 1.0 - distance**2 / 4)
        collapsed = lam > collapse_above
        return TrialResult(lambda_=lam, success_rate=success, val_pred_loss=0.1 + distance,
                           effective_rank_fraction=0.01 if collapsed else 0.5, collapsed=collapsed,
                           emb_std=0.8)

    evaluate.calls = calls  # type: ignore[attr-defined]
    return evaluate


def resolution(budget: int) -> float:
    """Spacing (decades) between the best trial and its neighbours after `budget` trials (3 + 2 per round)."""
    rounds = (budget - 3) // 2
    return (math.log10(HI) - math.log10(LO)) / 2 ** (rounds + 1)


@pytest.mark.parametrize("optimum", [0.09, 0.0013, 0.8, 0.02])
@pytest.mark.parametrize("budget", [5, 7, 9])
def test_finds_the_optimum_of_a_unimodal_curve_within_the_budget(optimum, budget):
    evaluate = peaked(optimum)
    result = search_lambda(evaluate, LO, HI, budget)
    assert len(result.trials) == len(evaluate.calls) == budget
    assert len(set(evaluate.calls)) == budget  # never the same λ twice
    assert len(result.rounds[0]) == 3
    assert all(LO <= t.lambda_ <= HI for t in result.trials)
    assert abs(math.log10(result.best.lambda_) - math.log10(optimum)) <= resolution(budget) + 1e-12


def test_search_is_deterministic_and_rounds_ascend():
    first = search_lambda(peaked(0.09), LO, HI, 7)
    second = search_lambda(peaked(0.09), LO, HI, 7)
    assert [t.lambda_ for t in first.trials] == [t.lambda_ for t in second.trials]
    for round_ in first.rounds:
        lambdas = [t.lambda_ for t in round_]
        assert lambdas == sorted(lambdas)
    # round 0 is the bracket and its log-midpoint
    assert [t.lambda_ for t in first.rounds[0]] == pytest.approx([LO, math.sqrt(LO * HI), HI])


def test_small_budgets():
    one = search_lambda(peaked(0.09), LO, HI, 1)
    assert [t.lambda_ for t in one.trials] == pytest.approx([math.sqrt(LO)])
    two = search_lambda(peaked(0.09), LO, HI, 2)
    assert sorted(t.lambda_ for t in two.trials) == pytest.approx([LO, math.sqrt(LO)])
    # one trial left for a round of two goes to the side of the better neighbour
    four = search_lambda(peaked(0.3), LO, HI, 4)
    assert len(four.rounds[1]) == 1 and four.rounds[1][0].lambda_ > math.sqrt(LO)


def test_collapsed_trials_rank_below_every_healthy_one():
    # success would keep rising towards λ = 1, but every λ above 0.2 collapses
    evaluate = peaked(optimum=1.0, collapse_above=0.2)
    result = search_lambda(evaluate, LO, HI, 9)
    assert not result.best.collapsed
    assert result.best.lambda_ <= 0.2
    collapsed = [t for t in result.trials if t.collapsed]
    assert collapsed and all(t.criterion == -math.inf for t in collapsed)
    # a collapsed trial loses even against a healthy one with zero success
    zero = TrialResult(0.5, 0.0, 9.0, 0.5, collapsed=False)
    assert best_trial([collapsed[0], zero]) is zero


def test_ties_are_broken_by_lower_validation_loss():
    result = search_lambda(peaked(0.09, flat=True), LO, HI, 9)
    assert len({t.criterion for t in result.trials}) == 1  # every trial ties on success
    best = result.best
    assert best.val_pred_loss == min(t.val_pred_loss for t in result.trials)
    assert abs(math.log10(best.lambda_) - math.log10(0.09)) <= resolution(9) + 1e-12


def test_next_round_bisects_towards_the_best():
    trials = [TrialResult(lam, s, 1.0, 0.5, False) for lam, s in [(1e-3, 0.2), (0.03, 0.9), (1.0, 0.5)]]
    assert next_round(trials, remaining=5) == pytest.approx([math.sqrt(1e-3 * 0.03), math.sqrt(0.03)])
    assert next_round(trials, remaining=1) == pytest.approx([math.sqrt(0.03)])  # the better neighbour's side
    assert bracket(trials) == (1e-3, 1.0)
    at_edge = [TrialResult(lam, s, 1.0, 0.5, False) for lam, s in [(1e-3, 0.9), (0.03, 0.5), (1.0, 0.2)]]
    assert next_round(at_edge, remaining=5) == pytest.approx([math.sqrt(1e-3 * 0.03)])
    assert bracket(at_edge) == (1e-3, 0.03)


def test_invalid_bracket_or_budget():
    with pytest.raises(ValueError, match="lambda_lo < lambda_hi"):
        search_lambda(peaked(0.1), 1.0, 0.1, 5)
    with pytest.raises(ValueError, match="trials"):
        search_lambda(peaked(0.1), LO, HI, 0)


def test_search_table_holds_the_trace():
    result = search_lambda(peaked(0.09), LO, HI, 5)
    table = search_table(result)
    assert list(table["round"]) == [0, 0, 0, 1, 1]
    assert {"lambda", "criterion", "success_rate", "val_pred_loss", "effective_rank_fraction", "emb_std",
            "collapsed", "run_id", "cached", "best"} <= set(table.columns)
    assert (table["emb_std"] == 0.8).all()  # both collapse diagnostics are in the trace
    assert table["best"].sum() == 1
    assert table.loc[table["best"], "lambda"].item() == result.best.lambda_


def test_trial_cache_hit_does_not_re_evaluate(tmp_path):
    evaluate = peaked(0.09)
    runs: list[str] = []

    def run(directory):
        runs.append(directory.name)
        (directory / "checkpoint").write_text("x")  # a trial writes into its own directory
        return evaluate(0.09)

    cache = TrialCache(tmp_path)
    first = cache.get_or_run("abc", run)
    again = cache.get_or_run("abc", run)
    other = cache.get_or_run("def", run)
    assert runs == ["abc", "def"]
    assert not first.cached and again.cached and not other.cached
    assert again == TrialResult(**{**first.__dict__, "cached": True})
    assert (tmp_path / "abc" / "checkpoint").is_file()


def test_rerun_of_a_cached_search_evaluates_nothing(tmp_path):
    evaluate = peaked(0.09)
    cache = TrialCache(tmp_path)

    def cached_evaluate(lam: float) -> TrialResult:
        return cache.get_or_run(f"{lam:.12g}", lambda _directory: evaluate(lam))

    first = search_lambda(cached_evaluate, LO, HI, 7)
    calls = len(evaluate.calls)
    second = search_lambda(cached_evaluate, LO, HI, 7)
    assert len(evaluate.calls) == calls == 7
    assert all(t.cached for t in second.trials)
    assert [t.lambda_ for t in second.trials] == [t.lambda_ for t in first.trials]


# ------------------------------------------------------------------------------------ the real pipeline


def test_cli_reports_bad_input_in_one_line_before_starting_prefect(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.bisect", "--env", "pusht", "--data",
                             str(tmp_path / "missing")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'missing'}: dataset directory not found (generate it with "
        "`python -m pipelines.generate --env <env>`)"]


def test_tiny_search_end_to_end(tiny_pusht, tiny_model, mlflow_store, tmp_path):
    """Two trials of 3 training steps, planned on 2 validation pairs: child runs under one parent, the
    trace and plot written and logged, the best model registered as champion; a re-run is all cache."""
    import mlflow

    from lewm.lambda_trials import run_search
    from lewm.registry import champion_version, load_champion

    overrides = [*tiny_model, "bisect.trials=2", "bisect.train_steps=3", "bisect.val_episodes=2",
                 "plan.cem.samples=8", "plan.cem.elites=2", "plan.cem.iterations=2", "plan.horizon=2",
                 "plan.receding=2",
                 "eval.budget=6", "eval.goal_offset=10", "train.val_every=3",
                 "tracking.experiment=bisect-test",
                 # a 3-step model has not left its initial scale yet: test the plumbing, not the criterion
                 "bisect.min_emb_std=0.0", "bisect.min_effective_rank_fraction=0.0"]
    out = tmp_path / "bisect"
    outcome = run_search("pusht", overrides=overrides, data_dir=tiny_pusht, out_dir=out)

    table = pd.read_parquet(out / "search.parquet")
    assert len(table) == 2 and not table["cached"].any()
    assert (out / "search.png").stat().st_size > 0 and (out / "best.json").is_file()
    assert len(list((out / "trials").glob("*/result.json"))) == 2
    assert not list((out / "trials").glob("*/train/checkpoints/last.pt"))  # model.pt is kept instead

    client = mlflow.MlflowClient()
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/lambda"] == pytest.approx(outcome.result.best.lambda_)
    assert {a.path for a in client.list_artifacts(outcome.parent_run_id, "bisect")} >= {
        "bisect/search.parquet", "bisect/search.png", "bisect/best.json"}
    for run_id in table["run_id"]:
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert "val_plan/reference.success_rate" in child.data.metrics
        assert float(child.data.params["model.lewm.lambda"]) in set(table["lambda"])

    name = "lewm-pusht"
    best = outcome.result.best
    assert outcome.model_version == str(champion_version(name).version)
    assert champion_version(name).run_id == best.run_id
    model = load_champion(name)
    assert hasattr(model, "encode") and not model.training

    again = run_search("pusht", overrides=overrides, data_dir=tiny_pusht, out_dir=out)
    assert all(t.cached for t in again.result.trials)
    assert [t.run_id for t in again.result.trials] == list(table["run_id"])
    assert again.model_version == outcome.model_version  # the same run keeps its registered version


@pytest.mark.slow
def test_parallel_flow_matches_the_sequential_search(tiny_pusht, tiny_model, mlflow_store, prefect_harness,
                                                     tmp_path):
    """`bisect.parallel=2` runs a round's trials in two worker processes through Prefect's process pool;
    the search takes the same path and measures the same values as the sequential run (up to float
    summation order: a worker uses 1 torch thread here, the sequential run 2)."""
    from lewm.lambda_trials import run_search
    from pipelines.bisect import bisect_flow

    overrides = [*tiny_model, "bisect.trials=3", "bisect.train_steps=3", "bisect.val_episodes=2",
                 "plan.cem.samples=8", "plan.cem.elites=2", "plan.cem.iterations=2", "plan.horizon=2",
                 "plan.receding=2",
                 "eval.budget=6", "eval.goal_offset=10", "train.val_every=3",
                 "bisect.min_emb_std=0.0", "bisect.min_effective_rank_fraction=0.0"]
    sequential = run_search("pusht", overrides=overrides, data_dir=tiny_pusht, out_dir=tmp_path / "seq",
                            track=False)
    summary = bisect_flow("pusht", overrides=[*overrides, "bisect.parallel=2"], data_dir=str(tiny_pusht),
                          out_dir=str(tmp_path / "par"), track=False)
    parallel = pd.read_parquet(summary["table"])
    assert list(parallel["lambda"]) == [t.lambda_ for t in sequential.result.trials]
    assert list(parallel["success_rate"]) == [t.success_rate for t in sequential.result.trials]
    losses = [t.val_pred_loss for t in sequential.result.trials]
    assert list(parallel["val_pred_loss"]) == pytest.approx(losses, rel=2e-2)
    assert summary["best_lambda"] == sequential.result.best.lambda_


def test_collapse_is_detected_by_rank_or_by_scale():
    from lewm.bisection import is_collapsed

    thresholds = {"min_fraction": 0.05, "min_emb_std": 0.05}
    assert not is_collapsed(0.24, 0.73, 0.19, **thresholds)  # the healthy λ = 0.09 run of bench_collapse
    assert is_collapsed(0.28, 0.006, 4e-5, **thresholds)  # λ = 0: high (scale-free) rank, std collapsed
    assert is_collapsed(0.01, 0.8, 0.1, **thresholds)  # embeddings on a few directions
    assert is_collapsed(0.3, 0.8, float("nan"), **thresholds)  # diverged
    assert is_collapsed(0.3, float("nan"), 0.1, **thresholds)  # no std measured: not trusted as healthy


# --------------------------------------------------------------------------------------- trial keys


def test_trial_key_is_equal_for_equal_params_and_changes_with_lambda_or_data():
    """Cached trials are found under the training fingerprint extended by what the trial evaluates."""
    from lewm.config import load_params
    from lewm.lambda_trials import trial_key

    def key(*overrides: str, data: str = "dataset-a") -> str:
        return trial_key(load_params(overrides=list(overrides)), "pusht", data)

    base = key("model.lewm.lambda=0.09")
    assert key("model.lewm.lambda=0.09") == base and len(base) == 16
    assert key("model.lewm.lambda=0.09", "train.log_every=7") == base  # execution-only: same result
    assert key("model.lewm.lambda=0.1") != base
    assert key("model.lewm.lambda=0.09", data="dataset-b") != base
    assert key("model.lewm.lambda=0.09", "plan.cem.samples=17") != base  # the evaluation is part of it
    assert key("model.lewm.lambda=0.09", "bisect.val_episodes=3") != base


def test_trial_params_override_the_models_lambda_and_the_run_length(tmp_path):
    from lewm.lambda_trials import SearchSetup

    setup = SearchSetup(env="pusht", params_path=None, overrides=("bisect.train_steps=7", "bisect.seed=4",
                                                                  "train.plan_eval_every=5"),
                        data_dir=str(tmp_path), out_dir=str(tmp_path / "out"),
                        manifest_path=str(tmp_path / "val.parquet"), parent_run_id=None)
    params = setup.trial_params(0.25)
    assert params.model.name == "lewm" and params.model.settings.lambda_ == 0.25
    assert (params.train.max_steps, params.train.seed, params.train.plan_eval_every) == (7, 4, 0)
    assert setup.trials_dir == tmp_path / "out" / "trials"
