"""Push-T environment: determinism, state round-trips, success predicates, rendering, contacts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lewm.envs import get_world, make_env
from lewm.envs.pusht import env as pusht
from lewm.envs.pusht.env import (
    PREDICATES,
    PushTEnv,
    angle_difference,
    block_center_of_gravity,
    block_errors,
    block_outline,
    success,
)

GOAL = np.array([100.0, 100.0, 200.0, 200.0, 0.05, 0.0, 0.0])


def test_reset_draws_states_in_the_documented_ranges_with_the_block_inside_the_walls():
    env = PushTEnv()
    for seed in range(30):
        state = env.reset(seed=seed)[0]["state"]
        assert np.all((state[0:2] >= 50) & (state[0:2] <= 450))
        assert np.all((state[2:4] >= 100) & (state[2:4] <= 400))
        assert 0 <= state[4] < 2 * math.pi
        np.testing.assert_array_equal(state[5:7], 0.0)
        corners = block_outline(state[2:4], state[4])
        assert corners.min() > pusht.WALL_INNER_LOW and corners.max() < pusht.WALL_INNER_HIGH
        assert pusht.distance_to_block(state[0:2], state[2:4], state[4]) > pusht.AGENT_RADIUS


def test_observation_layout_matches_names_and_spaces():
    env = PushTEnv(image_size=64)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].dtype == np.float64 and obs["state"].shape == (len(PushTEnv.state_names),)
    np.testing.assert_array_equal(obs["proprio"], obs["state"][[0, 1, 5, 6]])
    assert PushTEnv.proprio_names == tuple(PushTEnv.state_names[i] for i in (0, 1, 5, 6))
    assert PushTEnv.action_dim == 2 and env.action_space.shape == (2,)
    assert info == {"n_contacts": 0, "success": False}


@pytest.mark.parametrize("state", [
    [300.0, 80.0, 250.0, 260.0, 1.0, 30.0, -20.0],
    [60.0, 440.0, 320.0, 150.0, 6.0, 0.0, 0.0],
    [256.0, 256.0, 120.0, 380.0, -2.5, -50.0, 10.0],  # a negative angle reads back wrapped
])
def test_set_state_reads_back_the_state_also_mid_episode(state):
    state = np.array(state)
    env = PushTEnv()
    env.reset(seed=1)
    for _ in range(5):
        env.step(np.array([0.7, -0.3]))
    obs = env.set_state(state)
    expected = state.copy()
    expected[4] %= 2 * math.pi
    np.testing.assert_allclose(obs["state"], expected, atol=1e-9)
    # After the teleport the env behaves exactly like a fresh one set to the same state.
    fresh = PushTEnv()
    fresh_obs = fresh.set_state(state)
    np.testing.assert_array_equal(obs["pixels"], fresh_obs["pixels"])
    for _ in range(5):
        action = np.array([-0.5, 0.8])
        np.testing.assert_array_equal(env.step(action)[0]["state"], fresh.step(action)[0]["state"])


def test_reset_options_start_state_and_goal():
    env = PushTEnv()
    start = np.array([200.0, 200.0, 300.0, 300.0, 0.5, 0.0, 0.0])
    obs, info = env.reset(seed=0, options={"state": start, "goal_state": start})
    np.testing.assert_allclose(obs["state"], start)
    assert info["success"]
    assert env.reset(seed=0)[1]["success"] is False and env.goal_state is None  # a new episode has no goal
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"start": start})
    with pytest.raises(ValueError, match="shape"):
        env.set_state(start[:5])
    with pytest.raises(ValueError, match="shape"):
        env.set_goal_state(np.zeros(3))


def test_reward_terminated_and_truncated():
    env = PushTEnv(max_steps=3)
    start = np.array([100.0, 400.0, 300.0, 200.0, 1.0, 0.0, 0.0])
    env.reset(seed=0, options={"state": start})
    env.set_goal_state(start)
    _, reward, terminated, truncated, info = env.step(np.zeros(2))
    assert terminated and info["success"] and not truncated
    assert reward == pytest.approx(0.0, abs=1e-6)
    far_goal = start + np.array([0.0, 0.0, 30.0, 40.0, 0.0, 0.0, 0.0])
    env.set_goal_state(far_goal)
    _, reward, terminated, truncated, _ = env.step(np.zeros(2))
    assert not terminated and not truncated
    assert reward == pytest.approx(-50.0, abs=1e-3)
    assert env.step(np.zeros(2))[3]  # truncated at max_steps


def test_angle_difference_wraps_to_minus_pi_pi():
    assert angle_difference(0.05, 2 * math.pi - 0.05) == pytest.approx(0.1)
    assert angle_difference(2 * math.pi - 0.05, 0.05) == pytest.approx(-0.1)
    assert angle_difference(math.pi, 0.0) == pytest.approx(math.pi)
    assert angle_difference(-math.pi, 0.0) == pytest.approx(math.pi)  # (−π, π]: −π maps to π
    np.testing.assert_allclose(angle_difference(np.array([7.0, -7.0]), 0.0),
                               [7.0 - 2 * math.pi, -7.0 + 2 * math.pi])


def with_(state: np.ndarray, **changes: float) -> np.ndarray:
    state = state.copy()
    for name, value in changes.items():
        state[PushTEnv.state_names.index(name)] = value
    return state


def test_success_predicates_on_hand_built_states():
    assert success(GOAL, GOAL, "reference") and success(GOAL, GOAL, "block")
    wrapped = with_(GOAL, block_angle=2 * math.pi - 0.05)  # 0.1 rad from the goal's 0.05 across 0
    assert success(wrapped, GOAL, "reference") and success(wrapped, GOAL, "block")
    for predicate in PREDICATES:
        assert success(with_(GOAL, block_angle=0.05 + math.pi / 9 - 1e-6), GOAL, predicate)
        assert not success(with_(GOAL, block_angle=0.05 + math.pi / 9 + 1e-6), GOAL, predicate)
        assert not success(with_(GOAL, block_x=200.0 + 20.0), GOAL, predicate)
    agent_far = with_(GOAL, agent_x=400.0, agent_y=450.0)
    assert success(agent_far, GOAL, "block") and not success(agent_far, GOAL, "reference")
    # `reference` thresholds the joint 4-vector: 15 px off for both agent and block is 21.2 px.
    both_off = with_(GOAL, agent_x=115.0, block_y=215.0)
    assert success(both_off, GOAL, "block") and not success(both_off, GOAL, "reference")
    moving = with_(GOAL, agent_vx=300.0, agent_vy=-200.0)  # velocities do not count
    assert success(moving, GOAL, "reference")


def test_success_is_vectorised_over_leading_axes():
    states = np.stack([GOAL, with_(GOAL, agent_x=400.0), with_(GOAL, block_angle=1.0),
                       with_(GOAL, block_angle=-0.05)])
    expectations = {"reference": [True, False, False, True], "block": [True, True, False, True]}
    for predicate, expected in expectations.items():
        result = success(states, GOAL, predicate)
        assert isinstance(result, np.ndarray) and result.dtype == bool
        np.testing.assert_array_equal(result, expected)
        goals = np.broadcast_to(GOAL, states.shape)
        np.testing.assert_array_equal(success(states, goals, predicate), expected)
        batched = success(np.stack([states, states[::-1]]), GOAL, predicate)
        np.testing.assert_array_equal(batched, [expected, expected[::-1]])
    assert isinstance(success(GOAL, GOAL, "block"), bool)


def test_block_errors():
    state = with_(GOAL, block_x=203.0, block_y=204.0, block_angle=2 * math.pi - 0.05)
    position_error, angle_error = block_errors(state, GOAL)
    assert position_error == pytest.approx(5.0) and angle_error == pytest.approx(0.1)
    position_errors, angle_errors = block_errors(np.stack([GOAL, state]), GOAL)
    np.testing.assert_allclose(position_errors, [0.0, 5.0])
    np.testing.assert_allclose(angle_errors, [0.0, 0.1], atol=1e-12)


def test_unknown_names_raise_value_errors_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown success predicate 'coverage' \(known: reference, block\)"):
        success(GOAL, GOAL, "coverage")
    with pytest.raises(ValueError, match="reference, block"):
        PushTEnv(success_predicate="coverage")
    with pytest.raises(ValueError, match=r"unknown environment 'x' \(known: cube, pusht"):
        make_env("x")
    with pytest.raises(ValueError, match="known: cube, pusht"):
        get_world("x")


def test_registry():
    env = make_env("pusht", image_size=32, max_steps=7)
    assert isinstance(env, PushTEnv) and env.image_size == 32 and env.max_steps == 7
    world = get_world("pusht")
    assert world.env_class is PushTEnv and world.name == "pusht"
    assert world.success is success and world.predicates == PREDICATES == ("reference", "block")


@pytest.mark.parametrize("size", [64, 224])
def test_render_shape_dtype_and_content(size):
    env = PushTEnv(image_size=size)
    state = np.array([100.0, 400.0, 300.0, 150.0, 0.0, 0.0, 0.0])
    frame = env.set_state(state)["pixels"]
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), frame)

    def pixel(world_xy):
        x, y = (np.asarray(world_xy) * size / pusht.WORLD_SIZE).astype(int)
        return tuple(int(c) for c in frame[y, x])

    assert pixel((100.0, 400.0)) == pusht.AGENT_INNER_COLOR  # agent centre
    assert pixel(block_center_of_gravity(state[2:4], state[4])) == pusht.BLOCK_COLOR
    assert pixel((200.0, 300.0)) == pusht.BACKGROUND_COLOR
    assert pixel((5.0, 256.0))[0] < 255  # the left wall


def test_block_color_changes_only_block_pixels():
    env = PushTEnv()
    state = np.array([100.0, 400.0, 300.0, 150.0, 0.7, 0.0, 0.0])
    before = env.set_state(state)["pixels"]
    env.set_block_color((200, 40, 40))
    after = env.render()
    changed = np.any(before != after, axis=-1)
    assert changed.sum() > 50
    agent_pixel = (np.array([400.0, 100.0]) * 64 / 512).astype(int)  # (row, col)
    assert not changed[tuple(agent_pixel)] and not changed[0].any()
    cog = (block_center_of_gravity(state[2:4], state[4]) * 64 / 512).astype(int)
    assert tuple(after[cog[1], cog[0]]) == (200, 40, 40)
    with pytest.raises(ValueError, match="block colour"):
        env.set_block_color((300, 0, 0))


def test_goal_overlay_only_when_requested():
    goal = np.array([0.0, 0.0, 256.0, 256.0, math.pi / 4, 0.0, 0.0])
    start = np.array([450.0, 450.0, 150.0, 120.0, 0.0, 0.0, 0.0])
    plain, overlaid = PushTEnv(), PushTEnv(render_goal=True)
    for env in (plain, overlaid):
        env.reset(options={"state": start, "goal_state": goal})
    green = np.all(overlaid.render() == pusht.GOAL_COLOR, axis=-1)
    assert green.sum() > 50
    assert not np.all(plain.render() == pusht.GOAL_COLOR, axis=-1).any()


def push_block_from_the_left(env: PushTEnv, steps: int = 10) -> tuple[list[int], np.ndarray]:
    """Agent left of a horizontal-bar T, moving right into the stem; returns contacts and the final state."""
    env.reset(options={"state": np.array([180.0, 290.0, 256.0, 200.0, 0.0, 0.0, 0.0])})
    contacts = []
    for _ in range(steps):
        obs, _, _, _, info = env.step(np.array([0.5, 0.0]))
        contacts.append(info["n_contacts"])
    return contacts, obs["state"]


def test_contacts_are_counted_when_the_agent_pushes_the_block():
    env = PushTEnv()
    contacts, state = push_block_from_the_left(env)
    assert sum(contacts) > 0 and contacts[-1] > 0
    assert state[2] - 256.0 > 20.0  # the block moved right
    env.reset(options={"state": np.array([60.0, 60.0, 300.0, 300.0, 0.0, 0.0, 0.0])})
    assert all(env.step(np.array([0.3, 0.0]))[4]["n_contacts"] == 0 for _ in range(5))


def test_block_does_not_move_without_contact():
    env = PushTEnv()
    state = np.array([60.0, 60.0, 300.0, 300.0, 1.0, 0.0, 0.0])
    env.reset(options={"state": state})
    for _ in range(10):
        obs, *_ = env.step(np.array([0.0, 0.5]))
    np.testing.assert_array_equal(obs["state"][2:5], state[2:5])


def test_contact_friction_drags_the_block_sideways(monkeypatch):
    """Friction 1 on the shapes (deliberately unlike the reference) drags the block along a sliding
    agent; with frictionless shapes the same motion moves it much less sideways."""

    def sideways_motion() -> float:
        env = PushTEnv()
        # Agent just above the bar's top face, moving down into it and to the right along it.
        env.reset(options={"state": np.array([256.0, 183.0, 256.0, 200.0, 0.0, 0.0, 0.0])})
        for _ in range(5):
            obs, *_ = env.step(np.array([0.4, 0.2]))
        return obs["state"][2] - 256.0

    with_friction = sideways_motion()
    monkeypatch.setattr(pusht, "FRICTION", 0.0)
    without_friction = sideways_motion()
    assert with_friction > without_friction + 10.0


def test_simulate_reaches_the_state_stepping_reaches_without_rendering():
    """The oracle's render-free rollout is the env's physics: the same final state as `set_state` and
    `step`, rendering left out (a pushing sequence, so contacts are included)."""
    env = make_env("pusht", image_size=16)
    start = np.array([200.0, 120.0, 256.0, 256.0, 0.3, 0.0, 0.0])
    actions = np.tile([[0.2, 0.6]], (15, 1))
    env.set_state(start)
    for action in actions:
        stepped = env.step(action)[0]["state"]
    simulator = make_env("pusht", image_size=16)
    reached = simulator.simulate(start, actions)
    np.testing.assert_allclose(reached, stepped, atol=1e-9)
    assert np.linalg.norm(reached[2:4] - start[2:4]) > 5  # the block was pushed


def test_state_cost_is_the_reference_predicate_in_units_of_its_tolerances():
    cost = get_world("pusht").state_cost
    goal = np.array([100.0, 100.0, 300.0, 300.0, 1.0, 0.0, 0.0])
    offsets = np.array([[0, 0, 0, 0, 0, 0, 0], [20, 0, 0, 0, 0, 5, 5], [0, 0, 0, 0, math.pi / 9, 0, 0]])
    np.testing.assert_allclose(cost(goal + offsets, goal), [0.0, 1.0, 1.0])
    inside = goal + np.array([10, 0, 0, 0, 0.1, 0, 0])
    assert get_world("pusht").success(inside, goal, "reference") and cost(inside[None], goal)[0] < 2
