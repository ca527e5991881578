"""Evaluation protocol: held-out manifests, Wilson intervals, the summary's exclusions and per-seed spread
(checked by hand on a tiny table), end-to-end evaluation on a small Push-T dataset (every predicate of the
world scored), and the planning check that selects checkpoints during training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.optimize import brentq

from lewm import evaluation
from lewm.checkpoint import ModelMeta, model_meta
from lewm.config import EvalConfig, PlanConfig, load_params
from lewm.data.clips import ActionStats
from lewm.data.storage import EpisodeRecord, EpisodeStore, write_dataset
from lewm.envs import get_world, make_env
from lewm.evaluation import (
    PlanningCheck,
    build_manifest,
    check_manifest,
    evaluate,
    evaluate_model,
    goal_progress,
    oracle_factory,
    read_manifest,
    summarize,
    wilson_interval,
    write_episode_gif,
    write_manifest,
)
from lewm.models.lewm import LeWM
from lewm.planning import ZeroAgent, run_episode

# ---------------------------------------------------------------------------------------------- manifest

LENGTHS = {0: 12, 1: 7, 2: 9, 3: 10, 4: 8, 5: 30}
SPLITS = {"train": [0, 5], "val": [1], "test": [2, 3, 4]}


def synthetic_episode(episode: int, length: int) -> EpisodeRecord:
    """States encode (episode, step), so every manifest row can be checked by reading it."""
    steps = np.arange(length)
    return EpisodeRecord(
        episode=episode, seed=episode, frames=np.zeros((length, 4, 4, 3), np.uint8),
        actions=np.zeros((length - 1, 2), np.float32),
        states=np.stack([np.full(length, episode), steps], axis=1).astype(np.float64),
        proprio=steps[:, None].astype(np.float64), n_contacts=np.zeros(length - 1, np.int64),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EpisodeStore:
    manifest = {"env": "synthetic", "splits": SPLITS, "state_names": ["episode", "step"],
                "proprio_names": ["step"], "action_dim": 2}
    path = tmp_path_factory.mktemp("synthetic") / "ds"
    write_dataset(path, (synthetic_episode(e, n) for e, n in LENGTHS.items()), manifest)
    return EpisodeStore.open(path)


def test_manifest_pairs_come_from_test_episodes_with_goal_offset_steps_later(store: EpisodeStore) -> None:
    offset = 4
    available = sum(LENGTHS[e] - offset for e in SPLITS["test"])  # steps 0 … length − 1 − offset
    manifest = build_manifest(store, n=available, goal_offset=offset, seed=1)
    assert set(manifest["episode"]) == set(SPLITS["test"]) and (manifest["split"] == "test").all()
    assert list(manifest["pair"]) == list(range(available))
    assert not manifest.duplicated(["episode", "start_step"]).any()
    assert (manifest["goal_step"] - manifest["start_step"] == offset).all()
    assert (manifest["goal_step"] <= manifest["episode"].map(LENGTHS) - 1).all()
    # the stored states are those of the rows: (episode, step)
    np.testing.assert_array_equal(manifest["start_state_episode"], manifest["episode"])
    np.testing.assert_array_equal(manifest["start_state_step"], manifest["start_step"])
    np.testing.assert_array_equal(manifest["goal_state_step"], manifest["goal_step"])
    np.testing.assert_array_equal(manifest["goal_state_episode"], manifest["episode"])
    check_manifest(manifest, store)


def test_manifest_is_deterministic_given_the_seed(store: EpisodeStore) -> None:
    a, b = (build_manifest(store, n=10, goal_offset=3, seed=5) for _ in range(2))
    c = build_manifest(store, n=10, goal_offset=3, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["episode", "start_step"]].equals(c[["episode", "start_step"]])


def test_manifest_refuses_too_few_rows_and_the_train_split(store: EpisodeStore) -> None:
    available = sum(LENGTHS[e] - 4 for e in SPLITS["test"])
    with pytest.raises(ValueError, match=f"{available} valid start rows"):
        build_manifest(store, n=available + 1, goal_offset=4)
    with pytest.raises(ValueError, match="held-out"):
        build_manifest(store, split="train", n=2, goal_offset=4)


def test_manifest_round_trip_and_mismatch_detection(store: EpisodeStore, tmp_path: Path) -> None:
    manifest = build_manifest(store, n=6, goal_offset=3, seed=0)
    write_manifest(manifest, tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "m.parquet"), manifest)
    tampered = manifest.assign(goal_state_step=manifest["goal_state_step"] + 1)
    with pytest.raises(ValueError, match="do not match"):
        check_manifest(tampered, store)
    from_train = manifest.assign(split="train")
    with pytest.raises(ValueError, match="held-out"):
        check_manifest(from_train, store)
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest(pd.concat([manifest, manifest.iloc[:1]]), tmp_path / "dup.parquet")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.parquet")


# -------------------------------------------------------------------------------------------- statistics


def score_test_bounds(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson interval by definition: the p whose score statistic |p̂ − p| / √(p(1−p)/n) equals z."""
    rate = successes / n

    def score(p: float) -> float:
        return (rate - p) ** 2 - z * z * p * (1 - p) / n

    tiny = 1e-12  # the score is zero at p ∈ {0, 1}: bracket strictly inside
    low = 0.0 if successes == 0 else brentq(score, tiny, min(rate, 1 - tiny))
    high = 1.0 if successes == n else brentq(score, max(rate, tiny), 1 - tiny)
    return low, high


@pytest.mark.parametrize(("successes", "n", "expected"), [
    (0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)), (10, 10, (0.7225, 1.0)), (48, 50, (0.8654, 0.9890)),
])
def test_wilson_interval_matches_published_values_and_the_score_test(successes, n, expected) -> None:
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(expected, abs=1e-4)
    assert (low, high) == pytest.approx(score_test_bounds(successes, n), abs=1e-9)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def tiny_table() -> pd.DataFrame:
    """Method `m`, 4 pairs × 2 eval seeds; pair 0 starts already satisfying `p`."""
    rows = []
    outcomes = {0: [(True, 0), (True, 4), (False, None), (True, 6)],
                1: [(True, 0), (False, None), (False, None), (True, 8)]}
    for seed, results in outcomes.items():
        for pair, (ok, steps) in enumerate(results):
            rows.append({"eval_seed": seed, "pair": pair, "method": "m", "success_p": ok,
                         "steps_to_success_p": np.nan if steps is None else float(steps),
                         "start_satisfied_p": steps == 0, "final_block_pos_error": float(pair),
                         "start_block_pos_error": 4.0, "best_block_pos_error": pair / 2,
                         "plan_times_s": [0.1 * (pair + 1)] * 2})
    rows.append({**rows[0], "method": "zero", "plan_times_s": []})
    return pd.DataFrame(rows)


def test_summarize_excludes_satisfied_starts_and_checks_by_hand() -> None:
    metrics = summarize(tiny_table())
    # eligible: pairs 1-3 under both seeds = 6 episodes, 3 successes (2 under seed 0, 1 under seed 1)
    assert metrics["m.p.n"] == 6 and metrics["m.p.excluded"] == 2 and metrics["m.p.successes"] == 3
    assert metrics["m.p.success_rate"] == 0.5
    assert (metrics["m.p.ci_low"], metrics["m.p.ci_high"]) == pytest.approx(score_test_bounds(3, 6))
    assert metrics["m.p.steps_to_success_mean"] == pytest.approx((4 + 6 + 8) / 3)
    assert metrics["m.p.seed_mean"] == pytest.approx(0.5)
    assert metrics["m.p.seed_std"] == pytest.approx(np.std([2 / 3, 1 / 3], ddof=1))
    assert metrics["m.final_block_pos_error_mean"] == pytest.approx(1.5)
    assert metrics["m.best_block_pos_error_mean"] == pytest.approx(0.75)
    assert metrics["m.final_block_pos_error_vs_start"] == pytest.approx(1.5 / 4)
    assert metrics["m.best_block_pos_error_vs_start"] == pytest.approx(0.75 / 4)
    assert metrics["m.closer_fraction_block_pos_error"] == 1.0
    # zero ran (seed 0, pair 0) only, where both ended at 0: the ratio over the pairs both ran is undefined
    assert math.isnan(metrics["m.final_block_pos_error_vs_zero"])
    solves = np.repeat([0.1, 0.2, 0.3, 0.4], 4)  # 2 solves per episode, 2 seeds
    assert metrics["m.plan_time_median_s"] == pytest.approx(np.median(solves))
    assert metrics["m.plan_time_p90_s"] == pytest.approx(0.4)
    assert metrics["m.num_solves"] == 16 and "plan_time_median_s" not in metrics  # per method only
    assert "zero.plan_time_median_s" not in metrics
    # the only `zero` episode started satisfied: nothing left to rate
    assert metrics["zero.p.n"] == 0 and math.isnan(metrics["zero.p.success_rate"])
    assert metrics["pairs"] == 4 and metrics["eval_seeds"] == 2
    one_seed = summarize(tiny_table().query("eval_seed == 0"))
    assert one_seed["m.p.success_rate"] == 2 / 3 and "m.p.seed_std" not in one_seed


def test_goal_progress_compares_final_errors_with_the_start_and_with_zero_on_the_same_pairs() -> None:
    def episode(method: str, pair: int, start: float, best: float, final: float) -> dict:
        return {"eval_seed": 0, "pair": pair, "method": method, "start_e": start, "best_e": best,
                "final_e": final}

    planner = pd.DataFrame([episode("m", 0, 10, 2, 4), episode("m", 1, 20, 20, 30),
                            episode("m", 2, 30, 5, 5)])
    zero = pd.DataFrame([episode("zero", p, s, s, s) for p, s in ((0, 10), (1, 20), (2, 30), (3, 99))])
    progress = goal_progress(planner, zero)
    assert progress["start_e_mean"] == 20 and progress["best_e_mean"] == 9 and progress["final_e_mean"] == 13
    assert progress["final_e_vs_start"] == pytest.approx(13 / 20)
    assert progress["best_e_vs_start"] == pytest.approx(9 / 20)
    assert progress["closer_fraction_e"] == pytest.approx(2 / 3)
    assert progress["final_e_vs_zero"] == pytest.approx(13 / 20)  # pair 3 did not run for m: left out
    assert "final_e_vs_zero" not in goal_progress(planner, zero.iloc[:0])


# ------------------------------------------------------------------------------------ end to end, Push-T

IMAGE = 16


def pusht_episode(env, episode: int, length: int) -> EpisodeRecord:
    """A random-action Push-T episode, recorded as the dataset generator does."""
    rng = np.random.default_rng(episode)
    obs, _ = env.reset(seed=episode)
    frames, states, actions = [obs["pixels"]], [obs["state"]], rng.uniform(-1, 1, (length - 1, 2))
    for action in actions:
        obs = env.step(action)[0]
        frames.append(obs["pixels"])
        states.append(obs["state"])
    states = np.array(states)
    return EpisodeRecord(episode, episode, np.array(frames), actions.astype(np.float32), states,
                         states[:, [0, 1, 5, 6]], np.zeros(length - 1, np.int64))


@pytest.fixture(scope="module")
def pusht_store(tmp_path_factory: pytest.TempPathFactory) -> EpisodeStore:
    env_kwargs = {"image_size": IMAGE, "max_steps": 40}
    env = make_env("pusht", **env_kwargs)
    manifest = {"env": "pusht", "env_kwargs": env_kwargs, "splits": {"train": [0], "val": [1], "test": [2]},
                "state_names": list(env.state_names), "proprio_names": list(env.proprio_names),
                "action_dim": 2}
    path = tmp_path_factory.mktemp("pusht") / "ds"
    write_dataset(path, (pusht_episode(env, e, 25) for e in range(3)), manifest)
    return EpisodeStore.open(path)


def tiny_model_and_meta(store: EpisodeStore) -> tuple[LeWM, ModelMeta]:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        load_params().model.settings, encoder="vit", patch_size=8, encoder_dim=16, encoder_depth=1,
        encoder_heads=2, embed_dim=16, projector_hidden=32, predictor_depth=1, predictor_heads=2,
        predictor_head_dim=8, predictor_mlp_dim=32, predictor_dropout=0.1, action_smoothed_dim=10)
    model = LeWM(cfg, IMAGE, action_dim=2, frameskip=5, history=3)
    meta = model_meta("pusht", "lewm", cfg, IMAGE, 2, 5, 3, ActionStats.from_store(store))
    return model, meta


_LOADED = load_params()
# the dataclasses hold no defaults: params.yaml's sections with the test's settings
EVAL: EvalConfig = dataclasses.replace(_LOADED.eval, episodes=3, goal_offset=5, budget=8, seed=42,
                                       eval_seeds=[0, 1], gifs=1)
PLAN: PlanConfig = dataclasses.replace(
    _LOADED.plan, solver="cem", horizon=2, receding=1, seed=42,
    settings=dataclasses.replace(_LOADED.plan.settings, samples=8, elites=2, iterations=2, init_std=1.0,
                                 warm_start=True))


def test_evaluate_model_scores_lewm_and_baselines_on_the_same_pairs(pusht_store, tmp_path: Path) -> None:
    manifest = build_manifest(pusht_store, n=3, goal_offset=EVAL.goal_offset, seed=0)
    model, meta = tiny_model_and_meta(pusht_store)
    model.train()
    rows, summary = evaluate_model(model, meta, manifest, pusht_store, PLAN, EVAL, gif_dir=tmp_path)
    assert model.training  # restored
    assert len(rows) == 2 * 3 * 4 and set(rows["method"]) == {"lewm", "random", "zero", "oracle"}
    for _, group in rows.groupby(["eval_seed", "method"]):
        assert list(group["pair"]) == [0, 1, 2]
    # start flags describe the pair, not the method
    assert rows.groupby("pair")["start_satisfied_block"].nunique().eq(1).all()
    lewm = rows[rows["method"] == "lewm"]
    planners = rows["method"].isin(["lewm", "oracle"])
    assert (rows.loc[planners, "num_solves"] >= 1).all() and (rows.loc[~planners, "num_solves"] == 0).all()
    assert (rows["steps"] <= EVAL.budget).all() and (rows["final_block_angle_error"] >= 0).all()
    for key in ("lewm.reference.success_rate", "lewm.block.ci_low", "random.block.success_rate",
                "zero.reference.excluded", "oracle.plan_time_median_s", "lewm.plan_time_p90_s",
                "lewm.final_block_pos_error_vs_zero", "oracle.best_block_angle_error_vs_start"):
        assert key in summary
    assert sorted(p.name for p in tmp_path.glob("*.gif")) == [
        "lewm_pair000.gif", "oracle_pair000.gif", "random_pair000.gif", "zero_pair000.gif"]
    # a subset (as a training loop would use) reproduces the same episodes: seeds are per episode
    subset, _ = evaluate_model(model, meta, manifest, pusht_store, PLAN, EVAL, episodes=2, baselines=())
    pd.testing.assert_frame_equal(without_timing(subset), without_timing(lewm[lewm["pair"] < 2]))


def test_the_simulator_oracle_plans_on_the_true_simulator_and_is_refused_where_there_is_none(
        pusht_store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Move the agent 60 px with the block still (the reference predicate): the oracle, planning on the
    simulator with CEM, gets there; standing still does not. A world without a state cost, or a solver
    that needs gradients, is refused by name before any episode."""
    start = np.array([150.0, 150.0, 300.0, 300.0, 0.5, 0.0, 0.0])
    goal = start + np.array([60.0, 0, 0, 0, 0, 0, 0])
    _, meta = tiny_model_and_meta(pusht_store)
    plan = dataclasses.replace(PLAN, settings=dataclasses.replace(PLAN.settings, samples=64, elites=8,
                                                                 iterations=3))
    oracle = oracle_factory(meta, pusht_store, plan)(0)
    env, world = make_env("pusht", image_size=IMAGE), get_world("pusht")
    goal_pixels = np.zeros((IMAGE, IMAGE, 3), np.uint8)  # the oracle reads the goal state only
    reached = run_episode(env, oracle, start, goal, goal_pixels, 20, world.predicates, world.success,
                          errors_fn=world.final_errors)
    stayed = run_episode(env, ZeroAgent(2), start, goal, goal_pixels, 20, world.predicates, world.success,
                         errors_fn=world.final_errors)
    assert reached.success("reference") and not stayed.success("reference")
    assert len(oracle.solve_times) >= 1
    with pytest.raises(ValueError, match="needs gradients"):
        oracle_factory(meta, pusht_store, load_params(overrides=["plan.solver=gradient"]).plan)
    without_cost = dataclasses.replace(world, state_cost=None)
    monkeypatch.setattr(evaluation, "get_world", lambda name: without_cost)
    with pytest.raises(ValueError, match=r"eval\.baselines: world pusht defines no state_cost"):
        oracle_factory(meta, pusht_store, plan)


def without_timing(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop(columns=[c for c in rows if c.startswith("plan_time")]).reset_index(drop=True)


def test_evaluate_scores_every_predicate_of_the_world(pusht_store) -> None:
    """The world, not a parameter, lists the predicates: each gets its columns, and so does each of the
    world's final errors."""
    manifest = build_manifest(pusht_store, n=1, goal_offset=5, seed=0)
    cfg = dataclasses.replace(EVAL, budget=2, eval_seeds=[0])
    env, agents = make_env("pusht", image_size=IMAGE), {"zero": lambda seed: ZeroAgent(2)}
    world = get_world("pusht")
    assert set(world.predicates) == {"reference", "block"}
    rows = evaluate(manifest, pusht_store, env, agents, cfg)
    for kind in ("success", "steps_to_success", "start_satisfied"):
        assert {c.removeprefix(f"{kind}_") for c in rows if c.startswith(f"{kind}_")} == set(world.predicates)
    errors = world.final_errors(np.zeros(7), np.zeros(7))
    assert {c for c in rows if c.startswith("final_")} == {f"final_{name}" for name in errors}
    rates = {k for k in summarize(rows) if k.endswith(".success_rate")}
    assert rates == {f"zero.{p}.success_rate" for p in world.predicates}
    # a world listing a predicate its success function does not know is refused by name
    broken = dataclasses.replace(world, predicates=("reference", "coverage"))
    with pytest.raises(ValueError, match="coverage"):
        evaluate(manifest, pusht_store, env, agents, cfg, world=broken)


def test_planning_check_reports_val_success_rates_and_selects_on_the_headline(pusht_store) -> None:
    params = load_params(overrides=["train.plan_eval_episodes=2", "eval.budget=4", "eval.eval_seeds=[0]",
                                    "plan.cem.samples=8", "plan.cem.elites=2", "plan.cem.iterations=1",
                                    "plan.horizon=2", "plan.receding=1"])
    manifest = build_manifest(pusht_store, n=3, goal_offset=5, seed=0)
    model, meta = tiny_model_and_meta(pusht_store)
    check = PlanningCheck(params, pusht_store, manifest)
    assert check.headline == get_world("pusht").headline == "reference"
    metrics = check(model, meta)
    assert set(metrics) == {"val/plan_reference.success_rate", "val/plan_block.success_rate"}
    _, summary = evaluate_model(model, meta, manifest, pusht_store, params.plan, params.eval, episodes=2,
                                baselines=())
    assert summary["lewm.reference.n"] + summary["lewm.reference.excluded"] == 2  # the first 2 pairs only
    for predicate in ("reference", "block"):
        np.testing.assert_equal(metrics[f"val/plan_{predicate}.success_rate"],
                                summary[f"lewm.{predicate}.success_rate"])
    # the headline predicate alone decides; only a strictly better, defined rate is a new best
    assert check.is_best({"val/plan_reference.success_rate": 0.5, "val/plan_block.success_rate": 0.0})
    assert not check.is_best({"val/plan_reference.success_rate": 0.5, "val/plan_block.success_rate": 1.0})
    assert not check.is_best({"val/plan_reference.success_rate": float("nan")})
    assert not check.is_best({"val/plan_block.success_rate": 1.0})
    assert check.is_best({"val/plan_reference.success_rate": 0.75}) and check.best == 0.75


def test_episode_gif_shows_observation_and_goal_side_by_side(tmp_path: Path) -> None:
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200)]
    goal = np.full((8, 8, 3), 50, np.uint8)
    write_episode_gif(frames, goal, tmp_path / "e.gif", scale=3)
    with Image.open(tmp_path / "e.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (3 * (8 + 2 + 8), 3 * 8)
        gif.seek(1)
        pixels = np.array(gif.convert("RGB"))
    assert (pixels[:, :24] == 100).all() and (pixels[:, -24:] == 50).all()
