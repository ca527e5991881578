"""Two-Room world: determinism, observations, the wall and the door, state round-trips, success predicates,
rendering, the expert, the world spec and the simulator oracle (render-free rollouts, state cost)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lewm.config import PlanConfig, load_params
from lewm.data.clips import ActionStats
from lewm.envs import get_world, make_env
from lewm.envs.tworoom import TwoRoomEnv, TwoRoomExpert
from lewm.envs.tworoom import env as tworoom
from lewm.envs.tworoom.env import PREDICATES, crosses_wall, random_free_position, success
from lewm.planning import SimulatorOracleAgent, ZeroAgent, run_episode
from lewm.solvers import PlanResult, cem
from lewm.world import TELEPORT, PerturbationContext, UniformPolicy, teleport_destination

WORLD = get_world("tworoom")
LEFT, RIGHT = np.array([60.0, 150.0]), np.array([170.0, 150.0])


def shifted(point: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return point + np.array([dx, dy])


def in_wall_band(x: np.ndarray | float) -> np.ndarray | bool:
    x = np.asarray(x)
    return (x >= tworoom.BAND_LOW) & (x <= tworoom.BAND_HIGH)


def walk(env: TwoRoomEnv, start: np.ndarray, action: tuple[float, float], steps: int
         ) -> tuple[np.ndarray, list[int]]:
    """Agent positions (steps + 1, 2) and per-step contacts of a constant action from `start`."""
    obs, _ = env.reset(seed=0, options={"state": start})
    positions, contacts = [obs["state"]], []
    for _ in range(steps):
        obs, _, _, _, info = env.step(np.array(action))
        positions.append(obs["state"])
        contacts.append(info["n_contacts"])
    return np.stack(positions), contacts


# ------------------------------------------------------------------------------------------------ the env


def test_observation_layout_matches_names_and_spaces():
    env = TwoRoomEnv(image_size=64)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"pixels", "state", "proprio", "target"}
    assert env.observation_space.contains(obs)
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    for key in ("state", "proprio", "target"):
        assert obs[key].dtype == np.float64 and obs[key].shape == (2,)
    np.testing.assert_array_equal(obs["proprio"], obs["state"])
    assert TwoRoomEnv.state_names == TwoRoomEnv.proprio_names == ("agent_x", "agent_y")
    assert TwoRoomEnv.action_dim == 2 and env.action_space.shape == (2,)
    assert (env.image_size, env.max_steps) == (64, 100)
    assert info == {"n_contacts": 0, "success": False}
    step_obs = env.step(np.zeros(2, dtype=np.float32))[0]
    assert env.observation_space.contains(step_obs)
    np.testing.assert_array_equal(step_obs["target"], obs["target"])


def test_reset_draws_agent_and_target_uniformly_in_the_rooms_never_in_the_wall_band():
    env = TwoRoomEnv()
    draws = np.array([[*obs["state"], *obs["target"]]
                      for obs in (env.reset(seed=seed)[0] for seed in range(300))])
    positions = draws.reshape(-1, 2)
    assert positions.min() >= tworoom.AGENT_LOW and positions.max() <= tworoom.AGENT_HIGH
    assert not in_wall_band(positions[:, 0]).any()
    left = positions[:, 0] < tworoom.WALL_X
    assert 0.4 < left.mean() < 0.6  # the rooms are the same size
    assert positions[:, 1].min() < 40 and positions[:, 1].max() > 185  # the whole height is used


def test_wall_blocks_the_agent_outside_the_door_from_both_sides():
    env = TwoRoomEnv()
    positions, contacts = walk(env, LEFT, (1.0, 0.0), 20)  # 100 px to the right, at y = 150
    assert positions[:, 0].max() == tworoom.BAND_LOW == 100.0  # the disc touches the wall: allowed
    assert positions[-1, 0] == tworoom.BAND_LOW - tworoom.WALL_PUSHBACK == 99.5
    np.testing.assert_array_equal(positions[:, 1], 150.0)
    assert contacts[:8] == [0] * 8 and all(contacts[8:])  # blocked once a move would enter the band
    positions, contacts = walk(env, RIGHT, (-1.0, 0.0), 20)
    assert positions[:, 0].min() == tworoom.BAND_HIGH + tworoom.WALL_PUSHBACK == 124.5
    assert all(contacts[-5:])
    # Sliding diagonally along the wall keeps the vertical part of the move.
    positions, _ = walk(env, np.array([99.5, 150.0]), (1.0, 1.0), 4)
    np.testing.assert_allclose(positions[:, 0], 99.5)
    np.testing.assert_allclose(positions[-1, 1], 170.0)


def test_door_lets_the_agent_through_to_the_other_room():
    env = TwoRoomEnv()
    positions, contacts = walk(env, np.array([80.0, tworoom.DOOR_Y]), (1.0, 0.0), 12)
    assert positions[-1, 0] == pytest.approx(140.0) and positions[-1, 1] == tworoom.DOOR_Y
    assert contacts == [0] * 12
    positions, _ = walk(env, np.array([150.0, tworoom.DOOR_Y + 14.0]), (-1.0, 0.0), 12)  # near the edge
    assert positions[-1, 0] == pytest.approx(90.0)
    # Leaving the doorway sideways while inside the band pushes the agent back into its room.
    positions, contacts = walk(env, np.array([105.0, 60.0]), (0.0, 1.0), 1)
    np.testing.assert_allclose(positions[-1], [99.5, 65.0])
    assert contacts == [1]


def test_border_clamps_the_agent_disc_inside():
    env = TwoRoomEnv()
    positions, contacts = walk(env, np.array([25.0, 24.0]), (-1.0, -1.0), 3)
    np.testing.assert_allclose(positions[-1], [tworoom.AGENT_LOW, tworoom.AGENT_LOW])
    assert contacts == [1, 1, 1]
    positions, contacts = walk(env, np.array([200.0, 190.0]), (1.0, 1.0), 4)
    np.testing.assert_allclose(positions[-1], [tworoom.AGENT_HIGH, tworoom.AGENT_HIGH])
    assert contacts[0] == 1 and contacts[-1] == 1
    # Actions are clipped to [-1, 1]: a large action moves at most SPEED per axis, and is no contact.
    positions, contacts = walk(env, LEFT, (5.0, -5.0), 1)
    np.testing.assert_allclose(positions[-1], shifted(LEFT, tworoom.SPEED, -tworoom.SPEED))
    assert contacts == [0]


@pytest.mark.parametrize("state", [[60.0, 30.0], [180.0, 200.0], [112.0, 49.0], [99.5, 150.0]])
def test_set_state_reads_back_exactly_also_mid_episode(state):
    state = np.array(state)
    env = TwoRoomEnv()
    env.reset(seed=1)
    for _ in range(5):
        env.step(np.array([0.7, -0.3]))
    obs = env.set_state(state)
    np.testing.assert_array_equal(obs["state"], state)
    np.testing.assert_array_equal(env.render(), obs["pixels"])
    fresh = TwoRoomEnv()
    np.testing.assert_array_equal(fresh.set_state(state)["pixels"], obs["pixels"])
    for action in np.random.default_rng(0).uniform(-1, 1, (5, 2)):
        np.testing.assert_array_equal(env.step(action)[0]["state"], fresh.step(action)[0]["state"])


def test_reset_options_start_state_and_goal_which_is_also_the_target():
    env = TwoRoomEnv()
    obs, info = env.reset(seed=0, options={"state": LEFT, "goal_state": shifted(LEFT, 3.0, 4.0)})
    np.testing.assert_array_equal(obs["state"], LEFT)
    np.testing.assert_array_equal(obs["target"], shifted(LEFT, 3.0, 4.0))
    assert info["success"]
    obs, info = env.reset(seed=0)
    assert info["success"] is False and env.goal_state is None  # a new episode has no goal
    env.set_goal_state(RIGHT)
    np.testing.assert_array_equal(env.step(np.zeros(2))[0]["target"], RIGHT)


def test_reward_terminated_and_truncated():
    env = TwoRoomEnv(max_steps=3)
    env.reset(seed=0, options={"state": LEFT, "goal_state": shifted(LEFT, 0.0, 20.0)})
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0]))  # 15 px from the goal
    assert terminated and info["success"] and not truncated
    assert reward == pytest.approx(-15.0)
    _, reward, terminated, truncated, _ = env.step(np.array([0.0, -1.0]))
    assert not terminated and not truncated and reward == pytest.approx(-20.0)
    assert env.step(np.zeros(2))[3]  # truncated at max_steps
    env.reset(seed=0)
    assert env.step(np.zeros(2))[1] == 0.0  # no goal, no reward


def test_bad_input_raises_value_errors_naming_the_problem():
    env = TwoRoomEnv()
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"target": LEFT})
    with pytest.raises(ValueError, match=r"state must have shape \(2,\)"):
        env.set_state(np.zeros(3))
    with pytest.raises(ValueError, match=r"goal state must have shape \(2,\)"):
        env.set_goal_state(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="must be finite"):
        env.set_state(np.array([np.nan, 50.0]))
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="agent colour"):
        env.set_agent_color((256, 0, 0))
    with pytest.raises(ValueError, match="positive"):
        TwoRoomEnv(image_size=0)
    with pytest.raises(ValueError, match=r"predicate 'near' \(known: reference, route_valid\)"):
        TwoRoomEnv(success_predicate="near")


# ----------------------------------------------------------------------------------------- predicates


def test_success_predicates_on_hand_built_states():
    goal = np.array([60.0, 150.0])
    for predicate in PREDICATES:
        assert success(goal, goal, predicate)
        assert success(shifted(goal, 15.9, 0.0), goal, predicate)
        assert not success(shifted(goal, 16.0, 0.0), goal, predicate)  # strictly within 16 px
        assert not success(shifted(goal, 12.0, 12.0), goal, predicate)  # 16.97 px
    # The wrong side of the wall, 14 px apart: an endpoint match, not a reach.
    agent, wall_goal = np.array([105.0, 150.0]), np.array([119.0, 150.0])
    assert success(agent, wall_goal, "reference") and not success(agent, wall_goal, "route_valid")
    # The same 14 px across the wall through the doorway is a real reach.
    agent, door_goal = np.array([105.0, 49.0]), np.array([119.0, 49.0])
    assert success(agent, door_goal, "reference") and success(agent, door_goal, "route_valid")
    # Past a door post's corner: the segment enters the wall below the door.
    agent, corner_goal = np.array([99.0, 75.0]), np.array([110.0, 64.0])
    assert success(agent, corner_goal, "reference") and not success(agent, corner_goal, "route_valid")


def test_crosses_wall_cases():
    cases = {  # (start, end): crosses
        ((60.0, 150.0), (90.0, 100.0)): False,  # same room
        ((60.0, 150.0), (170.0, 150.0)): True,  # straight through the wall
        ((60.0, 49.0), (170.0, 49.0)): False,  # straight through the door
        ((60.0, 20.0), (170.0, 80.0)): False,  # diagonally through the door (y 45.6–51.1 in the wall)
        ((60.0, 40.0), (170.0, 90.0)): True,  # enters the wall in the door (y 61.4), leaves it below (65.9)
        ((110.0, 40.0), (110.0, 60.0)): False,  # vertical, inside the doorway
        ((110.0, 40.0), (110.0, 90.0)): True,  # vertical, out of the doorway inside the wall
        ((170.0, 150.0), (60.0, 150.0)): True,  # direction does not matter
    }
    starts = np.array([start for start, _ in cases])
    ends = np.array([end for _, end in cases])
    expected = list(cases.values())
    np.testing.assert_array_equal(crosses_wall(starts, ends), expected)
    np.testing.assert_array_equal(crosses_wall(ends, starts), expected)


def test_success_is_vectorised_over_leading_axes():
    rng = np.random.default_rng(0)
    goals = np.array([random_free_position(rng) for _ in range(64)])
    states = goals + rng.normal(0.0, 12.0, size=(64, 2))
    goals[:8] = [[105.0, 100.0 + i] for i in range(8)]  # 14 px apart across the wall
    states[:8] = shifted(goals[:8], 14.0, 0.0)
    for predicate in PREDICATES:
        vectorised = success(states, goals, predicate)
        per_state = [success(state, goal, predicate) for state, goal in zip(states, goals, strict=True)]
        assert isinstance(vectorised, np.ndarray) and vectorised.dtype == bool and vectorised.shape == (64,)
        assert all(isinstance(value, bool) for value in per_state)
        np.testing.assert_array_equal(vectorised, per_state)
        assert 0 < vectorised.sum() < 64
        grid = success(states.reshape(8, 8, 2), goals.reshape(8, 8, 2), predicate)
        np.testing.assert_array_equal(grid, vectorised.reshape(8, 8))
        np.testing.assert_array_equal(success(states, goals[0], predicate),
                                      [success(state, goals[0], predicate) for state in states])
    reference, route_valid = (success(states, goals, p) for p in PREDICATES)
    assert np.all(reference[route_valid]) and not np.all(route_valid[reference])


def test_final_errors_and_probe_targets():
    errors = WORLD.final_errors(np.array([63.0, 154.0]), np.array([60.0, 150.0]))
    assert errors == {"agent_pos_error": pytest.approx(5.0)}
    assert isinstance(errors["agent_pos_error"], float)
    assert [(q.name, q.columns, q.is_angle) for q in WORLD.probe_targets] == [("agent_xy", (0, 1), False)]


# ------------------------------------------------------------------------------------------- rendering


def pixel_of(world_xy: np.ndarray, size: int) -> tuple[int, int]:
    """(row, col) of the output pixel whose centre is nearest to a world point."""
    col, row = np.rint((np.asarray(world_xy) + 0.5) * size / tworoom.WORLD_SIZE - 0.5).astype(int)
    return int(row), int(col)


@pytest.mark.parametrize("size", [64, 96, 224])
def test_render_shape_dtype_and_content(size):
    env = TwoRoomEnv(image_size=size)
    frame = env.set_state(LEFT)["pixels"]
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), frame)
    red, green, _ = frame[pixel_of(LEFT, size)]
    assert red == 255 and green < 40
    assert tuple(frame[pixel_of((112.0, 150.0), size)]) == tworoom.WALL_COLOR
    assert tuple(frame[pixel_of((112.0, 49.0), size)]) == tworoom.BACKGROUND_COLOR  # the door
    assert tuple(frame[pixel_of((170.0, 100.0), size)]) == tworoom.BACKGROUND_COLOR
    assert tuple(frame[pixel_of((150.0, 12.0), size)]) != tworoom.BACKGROUND_COLOR  # the top border line


def test_background_at_224_matches_the_reference_pixels():
    """The reference draws pixels whose integer centre lies in the wall (107…117, outside the door
    35…63) or the 4-px border lines (10…13, 210…213)."""
    frame = TwoRoomEnv(image_size=224).set_state(np.array([-100.0, -100.0]))["pixels"]  # agent off screen
    y, x = np.mgrid[0:224, 0:224]
    wall = (x >= 107) & (x <= 117) & ~((y >= 35) & (y <= 63))
    lines = np.zeros((224, 224), dtype=bool)
    for first in (10, 210):
        lines[first:first + 4, :] = lines[:, first:first + 4] = True
    expected = np.where((wall | lines)[..., None], 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(frame, np.broadcast_to(expected, frame.shape))


def test_windowed_blob_equals_a_full_frame_blend():
    env = TwoRoomEnv(image_size=64)
    background = env.set_state(np.array([-100.0, -100.0]))["pixels"].astype(np.float64)
    centers = (np.arange(64) + 0.5) * 224 / 64 - 0.5
    for position in ([60.0, 150.0], [106.3, 49.7], [21.0, 203.0]):
        frame = env.set_state(np.array(position))["pixels"]
        d2 = (centers[None, :] - position[0]) ** 2 + (centers[:, None] - position[1]) ** 2
        alpha = np.exp(-d2 / (2 * tworoom.AGENT_RADIUS**2))[..., None]
        expected = np.rint(background + alpha * (np.array(tworoom.AGENT_COLOR) - background))
        assert np.abs(frame.astype(int) - expected).max() <= 1  # float32 vs float64 rounding at .5
        assert (frame != background.astype(np.uint8)).any(axis=-1).sum() > 20


def test_agent_color_changes_only_agent_pixels():
    env = TwoRoomEnv()
    before = env.set_state(LEFT)["pixels"]
    env.set_agent_color((0, 0, 255))
    after = env.render()
    changed = np.any(before != after, axis=-1)
    assert changed.sum() > 20
    rows, cols = np.nonzero(changed)
    centre = pixel_of(LEFT, 64)
    assert np.abs(rows - centre[0]).max() <= 8 and np.abs(cols - centre[1]).max() <= 8
    assert before[centre][0] > 240 and before[centre][2] < 15
    assert after[centre][2] > 240 and after[centre][0] < 15
    moved = env.step(np.array([1.0, 0.0]))[0]  # the colour stays, the dynamics are untouched
    np.testing.assert_array_equal(moved["state"], shifted(LEFT, 5.0, 0.0))
    assert moved["pixels"][pixel_of(shifted(LEFT, 5.0, 0.0), 64)][2] > 240


# ------------------------------------------------------------------------------------------- policies


def other_room_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Start and target drawn uniformly in the rooms, in different rooms."""
    rng, pairs = np.random.default_rng(123), []
    while len(pairs) < count:
        start, target = random_free_position(rng), random_free_position(rng)
        if (start[0] > tworoom.WALL_X) != (target[0] > tworoom.WALL_X):
            pairs.append((start, target))
    return pairs


def steps_to_reach(noise: float, pairs: list[tuple[np.ndarray, np.ndarray]], budget: int = 100
                   ) -> list[int | None]:
    """Steps the expert needs to get within 16 px of its first target (None: not within `budget`)."""
    env, results = TwoRoomEnv(max_steps=budget), []
    for i, (start, target) in enumerate(pairs):
        obs, _ = env.reset(seed=i, options={"state": start, "goal_state": target})
        policy = WORLD.make_policy("expert", np.random.default_rng(i), noise)
        policy.reset(obs)
        steps = None
        for t in range(1, budget + 1):
            obs, _, terminated, _, _ = env.step(policy.act(obs))
            if terminated:
                steps = t
                break
        results.append(steps)
    return results


def test_expert_reaches_targets_in_the_other_room_through_the_door():
    # Measured: 30/30 within 100 steps, median 34 steps (300/300 over 300 such pairs); the reference
    # measured 300/300 over its reset draws, either room (median 23; here 22).
    pairs = other_room_pairs(30)
    results = steps_to_reach(0.0, pairs)
    assert sum(steps is not None for steps in results) >= 29
    for (start, target), steps in zip(pairs, results, strict=True):  # no faster than 5 px per step
        if steps is not None:
            assert steps >= (np.linalg.norm(target - start) - tworoom.SUCCESS_DISTANCE) / tworoom.SPEED


def test_expert_path_goes_through_the_doorway():
    start, target = np.array([40.0, 180.0]), np.array([180.0, 180.0])
    env = TwoRoomEnv()
    obs, _ = env.reset(seed=0, options={"state": start, "goal_state": target})
    policy = TwoRoomExpert(np.random.default_rng(0), 0.0)
    policy.reset(obs)
    path = [obs["state"]]
    for _ in range(100):
        obs, _, terminated, _, _ = env.step(policy.act(obs))
        path.append(obs["state"])
        if terminated:
            break
    path = np.array(path)
    assert terminated
    in_band = in_wall_band(path[:, 0])
    assert in_band.any() and np.all(np.abs(path[in_band, 1] - tworoom.DOOR_Y) <= 15.75)
    assert path[:, 1].min() < 60  # it went up to the door, not straight right


def test_noisy_expert_reaches_more_often_than_random():
    pairs = other_room_pairs(20)
    noisy = steps_to_reach(2.0, pairs)
    # Measured: 12/20 here, 43 % over 300 such pairs; 74 % over 300 reset draws, either room (the
    # reference: 71 %).
    assert sum(steps is not None for steps in noisy) >= 5
    env = TwoRoomEnv()
    reached_by_random = 0
    for i, (start, target) in enumerate(pairs):
        obs, _ = env.reset(seed=i, options={"state": start, "goal_state": target})
        policy = WORLD.make_policy("random", np.random.default_rng(i), 2.0)
        reached_by_random += any(env.step(policy.act(obs))[2] for _ in range(100))
    assert reached_by_random < sum(steps is not None for steps in noisy)


def test_expert_draws_a_new_target_once_it_reaches_one_and_keeps_moving():
    env = TwoRoomEnv()
    obs, _ = env.reset(seed=0, options={"state": LEFT, "goal_state": shifted(LEFT, 10.0, 0.0)})
    policy = WORLD.make_policy("expert", np.random.default_rng(0), 0.0)
    policy.reset(obs)
    np.testing.assert_array_equal(policy.target, shifted(LEFT, 10.0, 0.0))
    positions = [obs["state"]]
    for _ in range(60):
        obs, *_ = env.step(policy.act(obs))
        positions.append(obs["state"])
    assert not np.array_equal(policy.target, shifted(LEFT, 10.0, 0.0))
    path = np.linalg.norm(np.diff(np.array(positions), axis=0), axis=1).sum()
    assert path > 100.0  # far more than the 10 px to the first target
    np.testing.assert_array_equal(obs["target"], shifted(LEFT, 10.0, 0.0))  # the env's target is untouched


def test_policies_are_float32_in_bounds_and_deterministic_per_rng():
    env = TwoRoomEnv()
    for name in WORLD.policies:
        runs = []
        for _ in range(2):
            obs, _ = env.reset(seed=4)
            policy = WORLD.make_policy(name, np.random.default_rng(9), 2.0)
            policy.reset(obs)
            actions = []
            for _ in range(30):
                action = policy.act(obs)
                actions.append(action)
                obs, *_ = env.step(action)
            runs.append(np.array(actions))
        assert runs[0].dtype == np.float32 and runs[0].shape == (30, 2)
        assert np.all(np.abs(runs[0]) <= 1.0) and runs[0].std() > 0.3
        np.testing.assert_array_equal(runs[0], runs[1])
    noiseless = WORLD.make_policy("expert", np.random.default_rng(0), 0.0)
    noiseless.reset(env.reset(seed=0, options={"state": LEFT, "goal_state": shifted(LEFT, 30.0, 40.0)})[0])
    np.testing.assert_allclose(noiseless.act({"state": LEFT}), [0.6, 0.8], rtol=1e-6)
    noiseless.reset(env.reset(seed=0, options={"state": LEFT, "goal_state": RIGHT})[0])  # via the door
    np.testing.assert_allclose(noiseless.act({"state": LEFT}), (tworoom.DOOR_CENTER - LEFT) / np.linalg.norm(
        tworoom.DOOR_CENTER - LEFT), rtol=1e-6)
    with pytest.raises(RuntimeError, match="before reset"):
        TwoRoomExpert(np.random.default_rng(0), 0.0).act({"state": LEFT})
    with pytest.raises(ValueError, match="invalid option for the expert policy of tworoom"):
        WORLD.make_policy("expert", np.random.default_rng(0), 0.0, push_speed=1.0)


# --------------------------------------------------------------------------------------------- the world


def test_world_spec():
    assert WORLD.name == "tworoom" and WORLD.env_class is TwoRoomEnv
    assert WORLD.predicates == PREDICATES == ("reference", "route_valid") and WORLD.headline == "reference"
    assert WORLD.success is success and set(WORLD.policies) == {"expert", "random"}
    assert isinstance(WORLD.make_policy("random", np.random.default_rng(0), 0.0), UniformPolicy)
    env = make_env("tworoom", image_size=32, max_steps=7)
    assert isinstance(env, TwoRoomEnv) and (env.image_size, env.max_steps) == (32, 7)
    assert set(WORLD.perturbations) == {"color", "teleport"} and WORLD.perturbations["teleport"] is TELEPORT


def voe_context(episode: int) -> PerturbationContext:
    settings = dataclasses.replace(load_params().voe, color=(30, 200, 30))
    return PerturbationContext(settings, episode, lambda: make_env("tworoom", image_size=64))


def test_color_perturbation_recolours_the_agent_before_the_step():
    color = WORLD.perturbations["color"]
    value = color.prepare(voe_context(0))
    assert value == (30, 200, 30) and color.after_step is None
    env = make_env("tworoom")
    env.reset(options={"state": LEFT})
    color.before_step(env, value)
    obs = env.step(np.array([0.0, 1.0]))[0]
    np.testing.assert_array_equal(obs["state"], shifted(LEFT, 0.0, 5.0))
    agent_pixel = obs["pixels"][pixel_of(shifted(LEFT, 0.0, 5.0), 64)].astype(int)
    assert np.abs(agent_pixel - (30, 200, 30)).max() <= 3


def test_teleport_puts_the_agent_at_a_reset_drawn_position():
    destination = teleport_destination(voe_context(2))
    np.testing.assert_array_equal(destination, teleport_destination(voe_context(2)))
    assert destination.shape == (2,) and not in_wall_band(destination[0])
    env = make_env("tworoom")
    env.reset(seed=0)
    env.step(np.array([0.3, 0.3]))
    obs = TELEPORT.after_step(env, destination)
    np.testing.assert_array_equal(obs["state"], destination)
    np.testing.assert_array_equal(obs["pixels"], make_env("tworoom").set_state(destination)["pixels"])


# ------------------------------------------------------------------------------------- simulator oracle


def test_simulate_reaches_the_state_stepping_reaches_without_rendering(monkeypatch):
    """The oracle's render-free rollout is the env's dynamics: the same final state as `set_state` and
    `step`, rendering left out (into the wall, up along it and through the door: wall hits included)."""
    actions = np.array([[1.0, 0.0]] * 12 + [[0.2, -1.0]] * 20 + [[1.0, 0.0]] * 8)
    env = make_env("tworoom", image_size=16)
    env.set_state(LEFT)
    hits = 0
    for action in actions:
        obs, _, _, _, info = env.step(action)
        hits += info["n_contacts"]
    assert hits > 0 and obs["state"][0] > tworoom.BAND_HIGH  # the wall stopped it, the door let it through
    simulator = make_env("tworoom", image_size=16)
    simulator.set_goal_state(RIGHT)
    monkeypatch.setattr(simulator, "render", lambda: pytest.fail("simulate rendered a frame"))
    np.testing.assert_array_equal(simulator.simulate(LEFT, actions), obs["state"])
    np.testing.assert_array_equal(simulator.goal_state, RIGHT)


def test_state_cost_is_the_reference_predicate_in_units_of_its_tolerance():
    cost = WORLD.state_cost
    goal = np.array([100.0, 150.0])
    offsets = np.array([[0.0, 0.0], [16.0, 0.0], [0.0, -16.0], [9.6, 12.8], [32.0, 0.0]])
    np.testing.assert_allclose(cost(goal + offsets, goal), [0.0, 1.0, 1.0, 1.0, 4.0])
    states = goal + np.random.default_rng(0).normal(0.0, 12.0, (500, 2))
    np.testing.assert_array_equal(cost(states, goal) < 1, success(states, goal, WORLD.headline))


@pytest.mark.parametrize("cost", ["last", "every_step"])
def test_the_simulator_oracle_reaches_a_goal_that_standing_still_does_not(cost: str):
    """36 px away in the same room: the oracle (CEM on the true dynamics, tiny settings) gets within 16 px
    in a few steps; the zero action stays put."""
    plan = PlanConfig("cem", cost=cost, horizon=2, receding=1, seed=0, precision="fp32", context_frames=1,
                      settings=cem.Config(samples=64, elites=8, iterations=3, init_std=1.0, warm_start=True))
    stats = ActionStats(mean=np.zeros(2), std=np.ones(2))
    oracle = SimulatorOracleAgent(WORLD, {"image_size": 16}, stats, 2, 5, plan, seed=0)
    env = make_env("tworoom", image_size=16)
    start, goal = LEFT, shifted(LEFT, 30.0, -20.0)
    goal_pixels = np.zeros((16, 16, 3), np.uint8)  # the oracle reads the goal state only
    reached, stayed = (run_episode(env, agent, start, goal, goal_pixels, 20, WORLD.predicates, WORLD.success)
                       for agent in (oracle, ZeroAgent(2)))
    assert reached.success(WORLD.headline) and not stayed.success(WORLD.headline)
    assert len(oracle.solve_times) >= 1


class CostRecorder:
    """A solver stand-in that keeps the cost it is given and returns a zero plan."""

    differentiable = False

    def __init__(self, horizon: int, block_dim: int) -> None:
        self.shape, self.cost = (horizon, block_dim), None

    def reset(self) -> None:
        pass

    def solve(self, cost):
        self.cost = cost
        return PlanResult(plan=torch.zeros(self.shape), elite_costs=[], best_costs=[])


def test_the_every_step_oracle_sums_the_state_cost_after_each_block():
    """`plan.cost: every_step`: the oracle's cost of a candidate is the state cost after block 1, 2 … H from
    the true state; `last` only the state after block H."""
    goal, costs = shifted(LEFT, 40.0, 0.0), {}
    for cost in ("last", "every_step"):
        plan = PlanConfig("cem", cost=cost, horizon=3, receding=1, seed=0, precision="fp32", context_frames=1,
                          settings=cem.Config(samples=8, elites=2, iterations=1, init_std=1.0,
                                              warm_start=True))
        oracle = SimulatorOracleAgent(WORLD, {"image_size": 16}, ActionStats(np.zeros(2), np.ones(2)), 2, 5,
                                      plan, seed=0)
        oracle.solver = CostRecorder(3, 10)
        oracle.start({"state": goal})
        oracle.act({"state": LEFT})
        costs[cost] = oracle.solver.cost
    blocks = torch.full((1, 3, 10), 0.5)  # every step's raw action is (0.5, 0.5)
    path = [TwoRoomEnv(image_size=16).simulate(LEFT, np.full((5 * k, 2), 0.5)) for k in (1, 2, 3)]
    expected = [WORLD.state_cost(state[None], goal)[0] for state in path]
    np.testing.assert_allclose(costs["last"](blocks).numpy(), [expected[-1]], rtol=1e-6)
    np.testing.assert_allclose(costs["every_step"](blocks).numpy(), [sum(expected)], rtol=1e-6)
