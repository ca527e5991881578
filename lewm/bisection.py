"""λ search by bisection on a log scale (reference §13: λ is LeWM's one effective hyperparameter).

The search is a pure function of `evaluate(λ) -> TrialResult`, so it is tested with synthetic curves and
reused unchanged by lewm/lambda_trials.py, whose trials train a model and plan on validation pairs.

Criterion: a trial's planning success rate on the validation pairs; ties (success rates are coarse, a few
dozen episodes) go to the lower validation prediction loss. A collapsed trial (effective rank below the
threshold, or a non-finite loss) ranks below every healthy one.

The search, in u = log10 λ:
1. Round 0 evaluates λ_lo, λ_hi and their log-midpoint (with a budget below 3: the midpoint, then λ_lo).
2. Every further round takes the best trial so far and its evaluated neighbours on either side, and
   evaluates the log-midpoints between the best and each neighbour. The bracket, the best's neighbours,
   thus shrinks around the best: after round k ≥ 1 the points around the best are
   (u_hi − u_lo) / 2^(k+1) apart. For a unimodal criterion the optimum lies between the best's neighbours,
   so each two trials halve the uncertainty: O(log n) trials for a resolution of 1/n of the bracket.
3. When only one trial is left for a round of two, it goes to the side of the better neighbour.
The search stops when the trial budget is spent. Points are never evaluated twice; rounds are evaluated
in ascending λ, so the search is deterministic whenever `evaluate` is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lewm.io import write_json

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class TrialResult:
    """What one trial at `lambda_` measured. `collapsed` makes it rank below every healthy trial."""

    lambda_: float
    success_rate: float  # on the validation pairs, in [0, 1] (NaN when no pair was eligible)
    val_pred_loss: float
    effective_rank_fraction: float
    collapsed: bool
    run_id: str | None = None
    cached: bool = False
    emb_std: float = math.nan  # mean per-dimension std of the validation embeddings

    @property
    def criterion(self) -> float:
        """Success rate; −inf for a collapsed trial, 0 when the rate is undefined."""
        if self.collapsed:
            return -math.inf
        return 0.0 if math.isnan(self.success_rate) else self.success_rate

    def rank_key(self) -> tuple[float, float]:
        """Sort key, larger is better: criterion, then lower validation prediction loss."""
        loss = self.val_pred_loss if math.isfinite(self.val_pred_loss) else math.inf
        return self.criterion, -loss


@dataclass
class SearchResult:
    """All trials, round by round, and the best one."""

    rounds: list[list[TrialResult]] = field(default_factory=list)

    @property
    def trials(self) -> list[TrialResult]:
        return [trial for round_ in self.rounds for trial in round_]

    @property
    def best(self) -> TrialResult:
        return best_trial(self.trials)


Evaluate = Callable[[float], TrialResult]
RunRound = Callable[[Evaluate, Sequence[float]], list[TrialResult]]
"""Evaluates one round's λ values (independent trials), returning results in the same order."""


def run_sequentially(evaluate: Evaluate, lambdas: Sequence[float]) -> list[TrialResult]:
    """The default `RunRound`: one trial after the other."""
    return [evaluate(lam) for lam in lambdas]


def is_collapsed(
    effective_rank_fraction: float, emb_std: float, val_pred_loss: float, min_fraction: float,
    min_emb_std: float,
) -> bool:
    """A trial collapsed if its embeddings span too few dimensions, shrank towards a point (mean
    per-dimension std below `min_emb_std`), or its loss is not finite. Both diagnostics are needed: the
    effective rank is scale-invariant, so embeddings collapsed to a tiny noisy cloud can still have a
    high one (measured with bench/bench_collapse.py: λ = 0 gave std 0.006 but a higher rank than λ = 0.09)."""
    healthy = effective_rank_fraction >= min_fraction and emb_std >= min_emb_std
    return not (math.isfinite(val_pred_loss) and healthy)


def best_trial(trials: Sequence[TrialResult]) -> TrialResult:
    """The best trial by `rank_key`; among exact ties, the smallest λ (deterministic)."""
    if not trials:
        raise ValueError("no trials")
    return max(sorted(trials, key=lambda t: t.lambda_, reverse=True), key=TrialResult.rank_key)


def log_midpoint(a: float, b: float) -> float:
    """The geometric mean of two positive values: the midpoint on a log scale."""
    return math.sqrt(a * b)


def best_and_neighbours(trials: Sequence[TrialResult]) -> tuple[TrialResult, list[TrialResult]]:
    """The best trial and the evaluated trials right beside it in λ (one each side, none past an edge)."""
    ordered = sorted(trials, key=lambda t: t.lambda_)
    best = best_trial(ordered)
    index = ordered.index(best)
    return best, ordered[max(index - 1, 0) : index] + ordered[index + 1 : index + 2]


def next_round(trials: Sequence[TrialResult], remaining: int) -> list[float]:
    """The λ values of the next round: log-midpoints between the best trial and its neighbours; with a
    single trial left, only towards the better neighbour."""
    best, neighbours = best_and_neighbours(trials)
    if remaining < len(neighbours):
        neighbours = [best_trial(neighbours)][:remaining]
    midpoints = {log_midpoint(best.lambda_, n.lambda_) for n in neighbours}
    return sorted(midpoints - {t.lambda_ for t in trials})  # empty at float resolution: the search ends


def bracket(trials: Sequence[TrialResult]) -> tuple[float, float]:
    """The current bracket: the best trial's neighbours in λ (the best itself at an edge)."""
    best, neighbours = best_and_neighbours(trials)
    lambdas = [best.lambda_, *(t.lambda_ for t in neighbours)]
    return min(lambdas), max(lambdas)


def search_lambda(
    evaluate: Evaluate, lambda_lo: float, lambda_hi: float, budget: int,
    run_round: RunRound = run_sequentially,
) -> SearchResult:
    """Bisection search of λ in [lambda_lo, lambda_hi] with at most `budget` trials (see module doc)."""
    if not 0 < lambda_lo < lambda_hi:
        raise ValueError(f"bisect: need 0 < lambda_lo < lambda_hi, got [{lambda_lo}, {lambda_hi}]")
    if budget < 1:
        raise ValueError(f"bisect.trials={budget} must be ≥ 1")
    first = [log_midpoint(lambda_lo, lambda_hi), lambda_lo, lambda_hi][:budget]
    result = SearchResult()
    lambdas = sorted(first)
    while lambdas:
        result.rounds.append(list(run_round(evaluate, lambdas)))
        lambdas = next_round(result.trials, budget - len(result.trials))
    return result


def search_table(result: SearchResult) -> Any:
    """The search trace as a DataFrame, one row per trial in evaluation order."""
    import pandas as pd

    rows = []
    for round_index, round_ in enumerate(result.rounds):
        for trial in round_:
            rows.append({"round": round_index, "lambda": trial.lambda_, "criterion": trial.criterion,
                         "success_rate": trial.success_rate, "val_pred_loss": trial.val_pred_loss,
                         "effective_rank_fraction": trial.effective_rank_fraction,
                         "emb_std": trial.emb_std, "collapsed": trial.collapsed,
                         "run_id": trial.run_id, "cached": trial.cached})
    table = pd.DataFrame(rows)
    table["best"] = table["lambda"] == result.best.lambda_
    return table


def plot_search(table: Any, path: str | Path) -> None:
    """Success rate against λ (log x) with the tie-breaking validation loss on a second axis; collapsed
    trials marked at 0, the best one ringed, each point labelled with its round. Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lewm.io import atomic_file

    ordered = table.sort_values("lambda").assign(y=lambda t: t["criterion"].clip(lower=0.0))
    healthy, collapsed = ordered[~ordered["collapsed"]], ordered[ordered["collapsed"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    loss_ax = ax.twinx()
    loss_ax.plot(ordered["lambda"], ordered["val_pred_loss"], "s--", color="gray", alpha=0.6, markersize=4)
    loss_ax.set_ylabel("validation prediction loss (ties)", color="gray")
    ax.plot(healthy["lambda"], healthy["y"], "o-", label="trial")
    ax.plot(collapsed["lambda"], collapsed["y"], "x", color="red", markersize=9, label="collapsed")
    best = ordered[ordered["best"]]
    ax.plot(best["lambda"], best["y"], "o", markersize=14, fillstyle="none", color="black", label="best")
    for lam, y, round_index in zip(ordered["lambda"], ordered["y"], ordered["round"], strict=True):
        ax.annotate(str(round_index), (lam, y), textcoords="offset points", xytext=(0, 8), fontsize=7,
                    ha="center", color="dimgray")
    ax.set_xscale("log")
    ax.set_xlabel("λ (SIGReg weight)")
    ax.set_ylabel("validation success rate")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("λ bisection (labels: round)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ trial cache


class TrialCache:
    """Finished trials on disk, `<root>/<key>/result.json`, so a re-run resumes instead of repeating.

    A trial writes its own files (checkpoints) into `<root>/<key>/` and its result last, atomically: an
    interrupted trial has no result and runs again (resuming from its checkpoint if it left one).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def directory(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> TrialResult | None:
        path = self.directory(key) / RESULT_FILE
        if not path.is_file():
            return None
        return replace(TrialResult(**json.loads(path.read_text())), cached=True)

    def put(self, key: str, result: TrialResult) -> None:
        write_json(self.directory(key) / RESULT_FILE, asdict(replace(result, cached=False)))

    def get_or_run(self, key: str, run: Callable[[Path], TrialResult]) -> TrialResult:
        """The cached result of `key`, or `run(trial_directory)`'s result, stored for next time."""
        cached = self.get(key)
        if cached is not None:
            return cached
        directory = self.directory(key)
        directory.mkdir(parents=True, exist_ok=True)
        result = run(directory)
        self.put(key, result)
        return result
