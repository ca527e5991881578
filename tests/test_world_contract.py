"""The contract every world keeps, checked for each package in lewm/envs/ (a new world is tested by being
there): a seeded episode replays exactly, observations match the declared names and spaces, `step`
reports success by the world's own `success` and truncates at `max_steps`, and `success` is vectorised.
What only one world has (walls, wrapped joints, grasps) is tested in that world's own file."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium
import numpy as np
import pytest

from lewm.envs import get_world, world_names
from lewm.world import World

STEPS = 30  # as long as the longest per-world seed test this replaced (Two-Room's)
STARTS = 8  # reset states of seeds 0…7, paired each with each: 64 (state, goal) pairs


@pytest.fixture(params=world_names())
def world(request: pytest.FixtureRequest) -> World:
    return get_world(request.param)


@pytest.fixture
def make(world: World) -> Iterator:
    """`make(**kwargs)` builds an env of the world; every env built is closed after the test."""
    built: list[gymnasium.Env] = []

    def build(**kwargs: object) -> gymnasium.Env:
        built.append(world.make_env(**kwargs))
        return built[-1]

    yield build
    for env in built:
        env.close()


def random_actions(world: World, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (STEPS, world.env_class.action_dim))


def episode(env: gymnasium.Env, seed: int, actions: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The observations of `reset(seed)` and then each action."""
    observations = [env.reset(seed=seed)[0]]
    observations += [env.step(action)[0] for action in actions]
    return observations


def assert_same_observations(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for obs_a, obs_b in zip(a, b, strict=True):
        assert obs_a.keys() == obs_b.keys()
        for key in obs_a:
            np.testing.assert_array_equal(obs_b[key], obs_a[key], err_msg=key)


def test_the_same_seed_replays_an_episode_exactly_and_another_seed_does_not(world: World, make) -> None:
    actions = random_actions(world)
    env = make()
    first = episode(env, 7, actions)
    episode(env, 3, actions)  # an episode in between must not leak into the next one
    assert_same_observations(episode(env, 7, actions), first)
    assert_same_observations(episode(make(), 7, actions), first)  # nor does the env's history
    other = episode(env, 8, actions)
    assert not np.array_equal(other[0]["state"], first[0]["state"])
    assert not np.array_equal(other[0]["pixels"], first[0]["pixels"])
    # the actions visibly move the scene: over two thirds of the frames differ (Reacher's own test asked
    # more than 10 of 16; Cube's gripper, the slowest to show, changes 23 of 31)
    assert len({obs["pixels"].tobytes() for obs in first}) > 2 * STEPS // 3


def test_observations_match_the_declared_names_and_spaces(world: World, make) -> None:
    env = make()
    cls = world.env_class
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["pixels"].shape == (env.image_size, env.image_size, 3) and obs["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(env.render(), obs["pixels"])
    assert obs["state"].dtype == np.float64 and obs["state"].shape == (len(cls.state_names),)
    assert obs["proprio"].shape == (len(cls.proprio_names),)
    for column, name in enumerate(cls.proprio_names):  # proprioception is the agent's own part of the state
        assert obs["proprio"][column] == obs["state"][cls.state_names.index(name)], name
    assert env.action_space.shape == (cls.action_dim,)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    assert info["success"] is False and info["n_contacts"] == 0  # no goal yet; nothing touched at a reset
    assert env.success_predicate == world.headline


def test_step_reports_the_worlds_success_and_truncates_at_max_steps(world: World, make) -> None:
    env = make(max_steps=STEPS)
    start, elsewhere = (env.reset(seed=seed)[0]["state"] for seed in (1, 2))
    assert env.reset(options={"state": start, "goal_state": elsewhere})[1]["success"] is False
    obs, info = env.reset(options={"state": start, "goal_state": start})
    np.testing.assert_array_equal(obs["state"], start)
    assert info["success"] is True  # the start is the goal
    for step, action in enumerate(random_actions(world, seed=1), start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        assert terminated is info["success"] is world.success(obs["state"], start, env.success_predicate)
        assert truncated is (step == STEPS)
        assert isinstance(reward, float) and np.isfinite(reward)


def test_success_is_vectorised_over_leading_axes_and_agrees_with_per_state_calls(world: World, make) -> None:
    env = make()
    starts = np.stack([env.reset(seed=seed)[0]["state"] for seed in range(STARTS)])
    states = np.repeat(starts, STARTS, axis=0)  # pair (i, j): state i, goal j; the diagonal is at its goal
    goals = np.tile(starts, (STARTS, 1))
    for predicate in world.predicates:
        vectorised = world.success(states, goals, predicate)
        per_pair = [world.success(state, goal, predicate) for state, goal in zip(states, goals, strict=True)]
        assert isinstance(vectorised, np.ndarray) and vectorised.dtype == bool
        assert vectorised.shape == (STARTS * STARTS,)
        assert all(isinstance(value, bool) for value in per_pair)
        np.testing.assert_array_equal(vectorised, per_pair)
        grid = vectorised.reshape(STARTS, STARTS)
        assert grid.diagonal().all() and not grid.all(), predicate
        square = (STARTS, STARTS, -1)
        shaped = world.success(states.reshape(square), goals.reshape(square), predicate)
        np.testing.assert_array_equal(shaped, grid)
        np.testing.assert_array_equal(world.success(starts, starts[0], predicate), grid[:, 0])  # one goal
