"""Cube world: determinism, observation layout, state round-trips, predicates and yaw symmetry, grasping,
the expert, rendering (colour change), workspace clipping, bad input, the world spec and the simulator
oracle (render-free rollouts, state cost)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from lewm.config import PlanConfig
from lewm.data.clips import ActionStats
from lewm.envs import get_world, make_env
from lewm.envs.cube import WORLD, CubeEnv, scene
from lewm.envs.cube import env as cube
from lewm.envs.cube.env import PREDICATES, cube_errors, cube_yaw, fold_yaw, success, yaw_quaternion
from lewm.envs.cube.expert import CubeExpert
from lewm.planning import SimulatorOracleAgent, ZeroAgent, run_episode
from lewm.solvers import cem
from lewm.world import TELEPORT, UniformPolicy


@pytest.fixture
def env() -> Iterator[CubeEnv]:
    environment = CubeEnv()
    yield environment
    environment.close()


def make_state(hand=(0.425, 0.0, 0.15), hand_yaw=0.0, fingers=0.0, block=(0.425, 0.0, 0.02),
               quaternion=None, block_yaw=0.0) -> np.ndarray:
    """A state at rest; the cube's orientation is `quaternion`, or a yaw `block_yaw` about the vertical."""
    quaternion = yaw_quaternion(block_yaw) if quaternion is None else np.asarray(quaternion, dtype=float)
    state = np.zeros(len(CubeEnv.state_names))
    state[cube.HAND], state[cube.HAND_YAW] = hand, hand_yaw
    state[4:6] = fingers
    state[cube.CUBE], state[cube.CUBE_QUAT] = block, quaternion
    state[cube.CUBE_YAW] = cube_yaw(quaternion)
    return state


def rotation_quaternion(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    axis_array = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    return np.append(math.cos(angle / 2), math.sin(angle / 2) * axis_array)


def quaternion_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation `a` after `b`, (w, x, y, z) quaternions."""
    (aw, ax, ay, az), (bw, bx, by, bz) = a, b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def expert_episode(environment: CubeEnv, seed: int, steps: int, action_noise: float = 0.0,
                   **options: float) -> tuple[CubeExpert, list[dict[str, np.ndarray]]]:
    """Run the expert from `reset(seed)`; the observations (steps + 1) and the policy."""
    obs, _ = environment.reset(seed=seed)
    policy = CubeExpert(np.random.default_rng(seed), action_noise, **options)
    policy.reset(obs)
    observations = [obs]
    for _ in range(steps):
        obs = environment.step(policy.act(obs))[0]
        observations.append(obs)
    return policy, observations


# ------------------------------------------------------------------------------- determinism and layout


def test_observation_layout_matches_names_and_spaces(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    assert obs["state"].dtype == np.float64 and obs["state"].shape == (26,) == (len(CubeEnv.state_names),)
    proprio = list(cube.PROPRIO)
    np.testing.assert_array_equal(obs["proprio"], obs["state"][proprio])
    assert CubeEnv.proprio_names == tuple(CubeEnv.state_names[i] for i in proprio)
    assert all(name.startswith(("hand_", "finger_")) for name in CubeEnv.proprio_names)
    assert CubeEnv.action_dim == 5 and env.action_space.shape == (5,)
    assert (env.image_size, env.max_steps) == (64, 200)
    assert info == {"n_contacts": 0, "success": False}
    np.testing.assert_array_equal(env.render(), obs["pixels"])


def test_reset_draws_states_in_the_documented_ranges_at_rest(env):
    for seed in range(30):
        state = env.reset(seed=seed)[0]["state"]
        assert np.all((state[cube.HAND] >= cube.HAND_START_LOW) & (state[cube.HAND] <= cube.HAND_START_HIGH))
        assert -math.pi <= state[cube.HAND_YAW] <= math.pi
        assert np.all((state[6:8] >= cube.CUBE_LOW) & (state[6:8] <= cube.CUBE_HIGH))
        assert state[8] == scene.CUBE_HALF_SIZE  # resting on the table
        quaternion = state[cube.CUBE_QUAT]
        assert quaternion[1] == quaternion[2] == 0.0 and np.linalg.norm(quaternion) == pytest.approx(1.0)
        assert -math.pi / 4 <= state[cube.CUBE_YAW] < math.pi / 4
        assert state[cube.CUBE_YAW] == pytest.approx(cube_yaw(quaternion))
        np.testing.assert_array_equal(state[4:6], 0.0)  # gripper open
        np.testing.assert_array_equal(state[cube.VELOCITIES], 0.0)
    # The hand starts clear of the cube, so holding still leaves the cube where it is.
    start = env.reset(seed=4)[0]["state"]
    for _ in range(3):
        obs, _, _, _, info = env.step(np.zeros(5))
        assert info["n_contacts"] == 0
    np.testing.assert_allclose(obs["state"][cube.CUBE], start[cube.CUBE], atol=1e-4)
    np.testing.assert_allclose(obs["state"][cube.HAND], start[cube.HAND], atol=1e-4)


@pytest.mark.parametrize("size", [32, 96])
def test_frames_have_the_requested_size(size):
    environment = CubeEnv(image_size=size)
    frame = environment.reset(seed=0)[0]["pixels"]
    environment.close()
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8


# ------------------------------------------------------------------------------------ set_state and goal


def test_set_state_restores_a_mid_episode_scene_exactly(env):
    """A state from the middle of a grasp (cube in the air, everything moving) reads back exactly, renders
    the same frame, and a fresh env set to it steps exactly like the one it was set in."""
    _, observations = expert_episode(env, seed=1, steps=16)
    carried = [obs for obs in observations if obs["state"][8] > 0.05]
    assert carried, "the expert lifted the cube within 16 steps"
    original = carried[0]
    assert np.abs(original["state"][cube.VELOCITIES]).max() > 0.01  # it is moving
    env.reset(seed=5)
    env.step(np.ones(5))
    obs = env.set_state(original["state"])
    np.testing.assert_array_equal(obs["state"], original["state"])
    np.testing.assert_array_equal(obs["pixels"], original["pixels"])
    fresh = CubeEnv()
    np.testing.assert_array_equal(fresh.set_state(original["state"])["pixels"], original["pixels"])
    for action in np.random.default_rng(2).uniform(-1, 1, (5, 5)):
        np.testing.assert_array_equal(env.step(action)[0]["state"], fresh.step(action)[0]["state"])
    fresh.close()


def test_set_state_normalises_the_quaternion_and_derives_the_cube_yaw(env):
    state = make_state(block_yaw=0.3)
    state[cube.CUBE_QUAT] *= 2.0
    state[cube.CUBE_YAW] = 1.0  # not read
    read_back = env.set_state(state)["state"]
    np.testing.assert_allclose(read_back[cube.CUBE_QUAT], yaw_quaternion(0.3), atol=1e-12)
    assert read_back[cube.CUBE_YAW] == pytest.approx(0.3)


def test_reset_options_start_state_and_goal(env):
    start = make_state(block=(0.4, 0.1, 0.02), block_yaw=0.2)
    obs, info = env.reset(seed=0, options={"state": start, "goal_state": start})
    np.testing.assert_allclose(obs["state"], start, atol=1e-12)
    assert info["success"]
    assert env.reset(seed=0)[1]["success"] is False and env.goal_state is None  # a new episode has no goal


def test_reward_terminated_and_truncated():
    environment = CubeEnv(max_steps=3)
    start = make_state(block=(0.4, 0.1, 0.02))
    environment.reset(options={"state": start, "goal_state": start})
    _, reward, terminated, truncated, info = environment.step(np.zeros(5))
    assert terminated and info["success"] and not truncated
    assert reward == pytest.approx(0.0, abs=1e-4)
    environment.set_goal_state(make_state(block=(0.43, 0.14, 0.02)))
    _, reward, terminated, truncated, _ = environment.step(np.zeros(5))
    assert not terminated and not truncated
    assert reward == pytest.approx(-0.05, abs=1e-4)
    assert environment.step(np.zeros(5))[3]  # truncated at max_steps
    environment.close()


def test_bad_input_raises_value_errors_naming_the_problem(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"start": make_state()})
    with pytest.raises(ValueError, match=r"shape \(26,\)"):
        env.set_state(np.zeros(13))
    with pytest.raises(ValueError, match=r"shape \(26,\)"):
        env.set_goal_state(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.set_state(np.full(26, np.nan))
    with pytest.raises(ValueError, match="quaternion"):
        env.set_state(make_state(quaternion=np.zeros(4)))
    with pytest.raises(ValueError, match="5 finite numbers"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="5 finite numbers"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="cube colour"):
        env.set_cube_color((300, 0, 0))
    with pytest.raises(ValueError, match=r"unknown success predicate 'near' \(known: reference, pose\)"):
        success(make_state(), make_state(), "near")
    with pytest.raises(ValueError, match="reference, pose"):
        CubeEnv(success_predicate="near")
    with pytest.raises(ValueError, match="positive"):
        CubeEnv(image_size=0)
    with pytest.raises(ValueError, match="speed"):
        CubeExpert(np.random.default_rng(0), 0.0, speed=2.0)


# ------------------------------------------------------------------------------------------- predicates


def test_cube_yaw_is_the_yaw_modulo_a_quarter_turn_whichever_face_is_down():
    for yaw in (0.0, 0.3, -0.7, 1.2, 3.0):
        expected = fold_yaw(yaw)
        assert -math.pi / 4 <= expected < math.pi / 4
        assert cube_yaw(yaw_quaternion(yaw)) == pytest.approx(expected)
        assert cube_yaw(yaw_quaternion(yaw + math.pi / 2)) == pytest.approx(expected)
        # Tipped onto a side face (a quarter turn about a horizontal axis), then turned: the same yaw.
        for axis in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):
            tipped = quaternion_product(yaw_quaternion(yaw), rotation_quaternion(axis, math.pi / 2))
            assert fold_yaw(cube_yaw(tipped) - expected) == pytest.approx(0.0, abs=1e-9)
    quaternions = np.stack([yaw_quaternion(yaw) for yaw in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]).reshape(2, 3, 4)
    np.testing.assert_allclose(cube_yaw(quaternions), fold_yaw(np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])))


def test_success_predicates_on_hand_built_states():
    goal = make_state(block=(0.4, 0.1, 0.02), block_yaw=0.2)
    assert success(goal, goal, "reference") and success(goal, goal, "pose")
    # A quarter turn looks the same: `pose` holds.
    quarter = make_state(block=(0.4, 0.1, 0.02), block_yaw=0.2 + math.pi / 2)
    assert success(quarter, goal, "pose")
    # The 0.04-m threshold, in 3-D; the hand does not count.
    assert success(make_state(block=(0.4 + 0.0399, 0.1, 0.02), block_yaw=0.2), goal, "pose")
    assert not success(make_state(block=(0.4, 0.1, 0.02 + 0.0401), block_yaw=0.2), goal, "reference")
    elsewhere = make_state(hand=(0.6, -0.3, 0.3), hand_yaw=2.0, fingers=0.03, block=(0.4, 0.1, 0.02),
                           block_yaw=0.2)
    assert success(elsewhere, goal, "pose")
    # Yaw: within π/9 modulo a quarter turn, across the fold at ±π/4.
    assert success(make_state(block=(0.4, 0.1, 0.02), block_yaw=0.2 + math.pi / 9 - 1e-6), goal, "pose")
    turned = make_state(block=(0.4, 0.1, 0.02), block_yaw=0.2 + math.pi / 9 + 1e-6)
    assert success(turned, goal, "reference") and not success(turned, goal, "pose")
    across = make_state(block_yaw=math.pi / 4 - 0.05)
    assert success(make_state(block_yaw=-math.pi / 4 + 0.05), across, "pose")


def test_success_is_vectorised_over_leading_axes():
    rng = np.random.default_rng(0)
    goals = np.stack([make_state(block=(0.4, 0.0, 0.02), block_yaw=rng.uniform(-3, 3)) for _ in range(48)])
    states = goals.copy()
    states[:, cube.CUBE] += rng.normal(0.0, 0.03, (48, 3))
    states[:, cube.CUBE_YAW] = fold_yaw(goals[:, cube.CUBE_YAW] + rng.normal(0.0, 0.4, 48))
    for predicate in PREDICATES:
        vectorised = success(states, goals, predicate)
        per_state = [success(state, goal, predicate) for state, goal in zip(states, goals, strict=True)]
        assert vectorised.dtype == bool and vectorised.shape == (48,)
        assert all(isinstance(value, bool) for value in per_state)
        np.testing.assert_array_equal(vectorised, per_state)
        assert 0 < vectorised.sum() < 48
        np.testing.assert_array_equal(success(states.reshape(6, 8, 26), goals.reshape(6, 8, 26), predicate),
                                      vectorised.reshape(6, 8))
        np.testing.assert_array_equal(success(states, goals[0], predicate),
                                      [success(state, goals[0], predicate) for state in states])
    reference, pose = success(states, goals, "reference"), success(states, goals, "pose")
    assert np.all(reference[pose]) and pose.sum() < reference.sum()


def test_final_errors_on_a_known_state_goal_pair():
    goal = make_state(block=(0.4, 0.1, 0.02), block_yaw=0.2)
    state = make_state(hand=(0.3, 0.3, 0.3), block=(0.43, 0.14, 0.02), block_yaw=0.2 - 0.1 + math.pi / 2)
    errors = WORLD.final_errors(state, goal)
    assert set(errors) == {"cube_pos_error", "cube_yaw_error"}
    assert all(isinstance(value, float) for value in errors.values())
    assert errors["cube_pos_error"] == pytest.approx(0.05)
    assert errors["cube_yaw_error"] == pytest.approx(0.1)
    position_errors, yaw_errors = cube_errors(np.stack([goal, state]), goal)
    np.testing.assert_allclose(position_errors, [0.0, 0.05])
    np.testing.assert_allclose(yaw_errors, [0.0, 0.1], atol=1e-12)


# ------------------------------------------------------------------------------------- physics and actions


def test_the_gripper_holds_the_cube_while_lifting_and_drops_it_when_open(env):
    """Pinch at the cube's centre, fingers across it: closing and lifting carries the cube up with the
    hand; lifting with the gripper open leaves it on the table."""
    start = make_state(hand=(0.45, 0.05, 0.02), hand_yaw=math.pi / 2 + 0.3, block=(0.45, 0.05, 0.02),
                       block_yaw=0.3)
    for grip, carried in ((1.0, True), (-1.0, False)):
        env.reset(options={"state": start})
        contacts = 0
        for _ in range(2):
            obs, _, _, _, info = env.step(np.array([0.0, 0.0, 0.0, 0.0, grip]))
            contacts += info["n_contacts"]
        for _ in range(4):
            obs, _, _, _, info = env.step(np.array([0.0, 0.0, 1.0, 0.0, grip]))
            contacts += info["n_contacts"]
        hand, block = obs["state"][cube.HAND], obs["state"][cube.CUBE]
        assert hand[2] == pytest.approx(0.22, abs=0.004)  # four 5-cm steps up
        if carried:
            assert contacts > 0 and info["n_contacts"] > 0
            np.testing.assert_allclose(block, hand, atol=0.005)
            closure = obs["state"][4] / scene.FINGER_TRAVEL
            assert closure == pytest.approx(0.5, abs=0.05)  # the fingers stopped on the cube's faces
        else:
            assert contacts == 0
            np.testing.assert_allclose(block, start[cube.CUBE], atol=1e-3)


def test_actions_are_relative_scaled_and_clipped_to_the_workspace(env):
    env.reset(options={"state": make_state(hand=(0.4, 0.0, 0.15), hand_yaw=0.0)})
    obs = env.step(np.array([0.4, -0.6, 0.2, 0.5, 0.0]))[0]
    np.testing.assert_allclose(obs["state"][:3], [0.42, -0.03, 0.16], atol=5e-4)  # the servos settle
    assert obs["state"][cube.HAND_YAW] == pytest.approx(0.15, abs=5e-3)  # within the 0.05-s step
    # Out-of-range actions act as ±1; targets stop at the workspace bounds and the yaw limit.
    env.reset(options={"state": make_state(hand=(0.58, 0.33, 0.33), hand_yaw=3.0)})
    for _ in range(3):
        obs = env.step(np.array([5.0, 5.0, 5.0, 5.0, 0.0]))[0]
    np.testing.assert_allclose(obs["state"][:3], cube.WORKSPACE_HIGH, atol=1e-3)
    assert obs["state"][cube.HAND_YAW] == pytest.approx(math.pi, abs=0.01)
    env.reset(options={"state": make_state(hand=(0.27, -0.33, 0.06), block=(0.5, 0.2, 0.02))})
    for _ in range(3):
        obs = env.step(-np.ones(5))[0]
    np.testing.assert_allclose(obs["state"][:3], cube.WORKSPACE_LOW, atol=1e-3)
    np.testing.assert_allclose(obs["state"][cube.CUBE], [0.5, 0.2, 0.02], atol=1e-4)  # not touched


# --------------------------------------------------------------------------------------------- policies


def test_noiseless_expert_places_the_cube_at_its_targets(env):
    """Each time the expert draws its next target, the cube lies within 0.04 m (and π/9 of yaw) of the
    last one; 10 episodes of 60 steps hold at least two pick-and-places each."""
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        policy = CubeExpert(np.random.default_rng(seed), 0.0)
        policy.reset(obs)
        placed = 0
        for _ in range(60):
            target = policy.target
            action = policy.act(obs)
            if target is not None and policy.target is not target:  # retargeted: the last one is done
                state = obs["state"]
                assert np.linalg.norm(state[6:8] - target[:2]) <= cube.SUCCESS_DISTANCE
                assert state[8] == pytest.approx(scene.CUBE_HALF_SIZE, abs=0.003)  # on the table
                assert abs(fold_yaw(state[cube.CUBE_YAW] - target[2])) < cube.SUCCESS_YAW
                placed += 1
            obs = env.step(action)[0]
        assert placed >= 2 and policy.placements >= placed


def test_expert_noise_is_per_episode_and_reproducible(env):
    """ξ ~ U(0, action_noise) per episode, Gaussian noise of std ξ on Δxyz and 3ξ on Δyaw; noisy episodes
    differ from noiseless ones yet repeat under the same rng, and still move the cube."""
    _, clean = expert_episode(env, seed=2, steps=40)
    _, noisy = expert_episode(env, seed=2, steps=40, action_noise=0.1)
    _, again = expert_episode(env, seed=2, steps=40, action_noise=0.1)
    noisy_states = np.stack([obs["state"] for obs in noisy])
    np.testing.assert_array_equal(noisy_states, np.stack([obs["state"] for obs in again]))
    assert not np.array_equal(noisy_states, np.stack([obs["state"] for obs in clean]))
    assert np.ptp(noisy_states[:, 6:9], axis=0).max() > 0.05

    expert = CubeExpert(np.random.default_rng(0), 0.1, speed=0.5)
    scales = []
    for _ in range(200):
        expert.reset({})
        scales.append(expert.noise_scale)
    assert 0.0 <= min(scales) < 0.01 and 0.09 < max(scales) <= 0.1
    assert np.mean(scales) == pytest.approx(0.05, abs=0.01)
    # Over the cube, square to it and open: the noiseless action descends at half speed, (0, 0, −0.5, 0).
    obs = env.set_state(make_state(hand=(0.45, 0.05, 0.12), hand_yaw=math.pi / 2, block=(0.45, 0.05, 0.02)))
    np.testing.assert_allclose(CubeExpert(np.random.default_rng(0), 0.0, speed=0.5).act(obs)[:4],
                               [0.0, 0.0, -0.5, 0.0], atol=1e-6)
    actions = np.stack([expert.act(obs) for _ in range(2000)])
    np.testing.assert_allclose(actions[:, :4].mean(axis=0), [0.0, 0.0, -0.5, 0.0],
                               atol=4 * expert.noise_scale)
    np.testing.assert_allclose(actions[:, :4].std(axis=0), expert.noise_scale * np.array([1, 1, 1, 3]),
                               rtol=0.1)


def test_world_policies_build_from_an_rng(env):
    obs, _ = env.reset(seed=0)
    random_policy = WORLD.make_policy("random", np.random.default_rng(0), 0.3)
    assert isinstance(random_policy, UniformPolicy)
    actions = np.stack([random_policy.act(obs) for _ in range(100)])
    assert actions.dtype == np.float32 and actions.shape == (100, 5)
    assert actions.min() >= -1.0 and actions.max() <= 1.0 and actions.min() < -0.9 and actions.max() > 0.9
    expert = WORLD.make_policy("expert", np.random.default_rng(0), 0.0, speed=0.5, lift_height=0.1)
    assert isinstance(expert, CubeExpert) and (expert.speed, expert.lift_height) == (0.5, 0.1)
    action = expert.act(obs)
    assert action.dtype == np.float32 and np.linalg.norm(action[:3]) <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="invalid option"):
        WORLD.make_policy("expert", np.random.default_rng(0), 0.0, push_speed=0.3)


# ------------------------------------------------------------------------------- rendering and the world


def test_colour_change_changes_only_cube_pixels(env):
    state = make_state(hand=(0.35, -0.1, 0.12), block=(0.45, 0.05, 0.02), block_yaw=0.4)
    before = env.set_state(state)["pixels"]
    away = state.copy()
    away[cube.CUBE] = (3.0, 3.0, 0.02)
    cube_pixels = np.any(env.set_state(away)["pixels"] != before, axis=-1)
    assert 30 <= cube_pixels.sum() <= 80  # a 4-cm cube spans ~6 × 7 px at 64 px
    env.set_state(state)
    env.set_cube_color((220, 60, 60))
    after = env.render()
    changed = np.any(after != before, axis=-1)
    assert changed.sum() >= 0.8 * cube_pixels.sum()
    assert not (changed & ~cube_pixels).any()
    red = after[changed].astype(int)
    assert np.all(red[:, 0] > red[:, 2]) and np.all(before[changed][:, 2] > before[changed][:, 0])
    assert env.cube_color == (220, 60, 60)


def test_world_spec_and_registry():
    world = get_world("cube")
    assert world is WORLD and world.name == "cube" and world.env_class is CubeEnv
    assert world.predicates == PREDICATES == ("reference", "pose") and world.headline == "reference"
    assert world.success is success and set(world.policies) == {"expert", "random"}
    environment = make_env("cube", image_size=32, max_steps=7)
    assert isinstance(environment, CubeEnv) and (environment.image_size, environment.max_steps) == (32, 7)
    environment.close()
    names = [quantity.name for quantity in world.probe_targets]
    assert names == ["hand_xyz", "hand_yaw_angle", "finger_left", "cube_xyz", "cube_yaw_angle",
                     "hand_velocity", "cube_velocity"]
    by_name = {quantity.name: quantity for quantity in world.probe_targets}
    assert by_name["cube_xyz"].columns == (6, 7, 8) and by_name["hand_yaw_angle"].is_angle
    assert set(world.perturbations) == {"color", "teleport"} and world.perturbations["teleport"] is TELEPORT


def test_cube_yaw_probe_targets_are_continuous_across_the_fold():
    quantity = WORLD.probe_targets[[q.name for q in WORLD.probe_targets].index("cube_yaw_angle")]
    assert quantity.is_angle and quantity.folds == 4 and quantity.dims == 2
    states = np.stack([make_state(block_yaw=yaw) for yaw in (math.pi / 4 - 1e-3, -math.pi / 4 + 1e-3, 0.0)])
    targets = quantity.values(states)
    assert targets.shape == (3, 2)
    np.testing.assert_allclose(targets[0], targets[1], atol=1e-2)
    np.testing.assert_allclose(targets[2], [0.0, 1.0], atol=1e-12)


def test_perturbations_recolour_the_cube_and_teleport_the_scene(env):
    color = WORLD.perturbations["color"]
    env.reset(seed=0)
    color.before_step(env, (220, 60, 60))
    assert env.cube_color == (220, 60, 60)
    other = CubeEnv()
    destination = other.reset(seed=11)[0]["state"]
    other.close()
    env.step(np.ones(5))
    obs = TELEPORT.after_step(env, destination)
    np.testing.assert_array_equal(obs["state"], destination)


# ------------------------------------------------------------------------------------- simulator oracle


def test_simulate_reaches_the_state_stepping_reaches_without_rendering(monkeypatch):
    """The oracle's render-free rollout is the env's physics: the same final state as `set_state` and
    `step`, rendering left out (down to the cube, a grasp, then a lift turning the hand: contacts
    included)."""
    start = make_state()  # the open hand 13 cm above the cube
    actions = np.array([[0.0, 0.0, -1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 0.0, 0.0, 1.0]] * 4
                       + [[0.3, 0.0, 1.0, 0.3, 1.0]] * 3)
    environment = CubeEnv(image_size=16)
    environment.set_state(start)
    contacts = 0
    for action in actions:
        obs, _, _, _, info = environment.step(action)
        contacts += info["n_contacts"]
    environment.close()
    stepped = obs["state"]
    assert contacts > 0 and stepped[cube.CUBE][2] > 0.1  # grasped and lifted
    simulator = CubeEnv(image_size=16)
    goal = make_state(block=(0.5, 0.1, 0.02))
    simulator.set_goal_state(goal)
    monkeypatch.setattr(simulator, "render", lambda: pytest.fail("simulate rendered a frame"))
    reached = simulator.simulate(start, actions)
    simulator.close()
    np.testing.assert_array_equal(reached, stepped)
    np.testing.assert_array_equal(simulator.goal_state, goal)


def test_state_cost_is_the_reference_predicate_in_units_of_its_tolerance():
    """(cube position error / 0.04 m)²: 1 at the border in any direction; the hand and the cube's yaw do
    not count."""
    cost = WORLD.state_cost
    goal = make_state(block=(0.4, 0.1, 0.02))
    states = np.stack([goal, make_state(block=(0.44, 0.1, 0.02)), make_state(block=(0.4, 0.1 - 0.024, 0.052)),
                       make_state(hand=(0.3, 0.2, 0.1), hand_yaw=1.0, fingers=0.02, block=(0.4, 0.1, 0.02),
                                  block_yaw=0.3),
                       make_state(block=(0.48, 0.1, 0.02))])
    np.testing.assert_allclose(cost(states, goal), [0.0, 1.0, 1.0, 0.0, 4.0], atol=1e-12)
    around = np.repeat(goal[None], 500, axis=0)
    around[:, cube.CUBE] += np.random.default_rng(0).normal(0.0, 0.03, (500, 3))
    np.testing.assert_array_equal(cost(around, goal) <= 1, success(around, goal, WORLD.headline))


# The open hand at table height just beside the cube (its pad 3 mm from the cube's −y face): pushing along
# +y moves the cube.
BESIDE = make_state(hand=(0.425, -0.075, 0.02))


def test_the_simulator_oracle_reaches_a_goal_that_standing_still_does_not():
    """The cube 6 cm along +y from where the hand stands beside it: the oracle (CEM on the true simulator,
    tiny settings) pushes it within 4 cm in a few steps; the zero action leaves it where it is."""
    plan = PlanConfig("cem", cost="last", horizon=1, receding=1, seed=0, precision="fp32", context_frames=1,
                      settings=cem.Config(samples=64, elites=8, iterations=3, init_std=1.0, warm_start=True))
    oracle = SimulatorOracleAgent(WORLD, {"image_size": 16}, ActionStats(mean=np.zeros(5), std=np.ones(5)),
                                  5, 5, plan, seed=0)
    goal = BESIDE.copy()
    goal[cube.CUBE] += [0.0, 0.06, 0.0]
    environment = CubeEnv(image_size=16)
    goal_pixels = np.zeros((16, 16, 3), np.uint8)  # the oracle reads the goal state only
    try:
        reached, stayed = (run_episode(environment, agent, BESIDE, goal, goal_pixels, 15, WORLD.predicates,
                                       WORLD.success) for agent in (oracle, ZeroAgent(5)))
    finally:
        environment.close()
        oracle.simulator.close()
    assert reached.success(WORLD.headline) and not stayed.success(WORLD.headline)
