"""Reacher world: scene facts, determinism, state round-trips, success predicates, rendering, policies, the
World spec and the simulator oracle (render-free rollouts, state cost)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from lewm.config import PlanConfig
from lewm.data.clips import ActionStats
from lewm.envs import get_world, make_env
from lewm.envs.reacher import WORLD, final_errors
from lewm.envs.reacher import env as reacher
from lewm.envs.reacher.env import (
    PREDICATES,
    ReacherEnv,
    angle_difference,
    fingertip,
    joint_errors,
    success,
    wrap_angle,
)
from lewm.envs.reacher.expert import ReacherExpert
from lewm.planning import SimulatorOracleAgent, ZeroAgent, run_episode
from lewm.solvers import cem
from lewm.world import TELEPORT, PerturbationContext, UniformPolicy, teleport_destination

mujoco = reacher.mujoco  # imported by env.py once lewm.envs had chosen the headless GL backend

GOAL = np.array([0.4, -1.0, 0.0, 0.0])
SHOULDER_BINS, WRIST_BINS = 12, 8


@pytest.fixture
def make() -> Iterator[Callable[..., ReacherEnv]]:
    """Build envs that are closed (their GL contexts released) when the test ends."""
    envs: list[ReacherEnv] = []

    def build(**kwargs: int) -> ReacherEnv:
        envs.append(ReacherEnv(**kwargs))
        return envs[-1]

    yield build
    for env in envs:
        env.close()


def scene(qpos: np.ndarray) -> tuple[mujoco.MjModel, mujoco.MjData]:
    """The package's MJCF compiled on its own, posed at `qpos` with the kinematics computed."""
    model = mujoco.MjModel.from_xml_string(reacher.MJCF)
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    return model, data


# ------------------------------------------------------------------------------------------ scene and env


def test_scene_has_the_dm_control_reacher_facts():
    model, data = scene(np.zeros(2))
    assert model.opt.timestep == 0.02
    assert model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT
    shoulder, wrist = model.joint("shoulder"), model.joint("wrist")
    assert not shoulder.limited[0] and wrist.limited[0]
    np.testing.assert_allclose(wrist.range, [-reacher.WRIST_LIMIT, reacher.WRIST_LIMIT])
    np.testing.assert_allclose(model.dof_damping, [0.01, 0.01])
    np.testing.assert_allclose(model.actuator_gear[:, 0], [0.05, 0.05])
    np.testing.assert_allclose(model.actuator_ctrlrange, [[-1, 1], [-1, 1]])
    np.testing.assert_allclose(model.geom("arm").size[:2], [0.01, 0.06])  # radius, half-length
    np.testing.assert_allclose(model.geom("hand").size[:2], [0.01, 0.05])
    np.testing.assert_allclose(data.camera("fixed").xpos, [0.0, 0.0, reacher.CAMERA_HEIGHT])
    np.testing.assert_allclose(data.camera("fixed").xmat.reshape(3, 3), np.eye(3))  # looking straight down
    np.testing.assert_allclose(data.geom("finger").xpos[:2], [0.24, 0.0])
    assert "target" not in [model.geom(i).name for i in range(model.ngeom)]  # goals are configurations


def test_the_drawn_links_are_massless_and_the_physical_ones_hidden():
    """The thick visual geoms change what the camera sees, not the dynamics: each body's mass is its
    physical geom's at MuJoCo's default density 1000, and only the visual geoms are in a drawn group."""
    model, _ = scene(np.zeros(2))
    ball, finger = (4 / 3 * np.pi * radius**3 for radius in (reacher.LINK_RADIUS, reacher.FINGER_RADIUS))
    cylinder = np.pi * reacher.LINK_RADIUS**2 * np.array([reacher.ARM_LENGTH, 0.1])
    np.testing.assert_allclose([model.body(name).mass[0] for name in ("arm", "hand", "finger")],
                               1000 * np.array([*(cylinder + ball), finger]))
    assert {model.geom(name).group[0] for name in ("arm", "hand", "finger")} == {3}  # not drawn by default
    assert {model.geom(name).group[0] for name in reacher.ARM_GEOMS} == {0}


def test_one_env_step_is_two_physics_steps_with_the_action_as_control(make):
    env = make(image_size=16)
    start = np.array([0.3, -0.5, 1.0, -2.0])
    env.reset(options={"state": start})
    action = np.array([0.6, -1.0])
    state = env.step(action)[0]["state"]
    model, data = scene(start[:2])
    data.qvel[:] = start[2:]
    data.ctrl[:] = action
    for _ in range(reacher.ACTION_REPEAT):
        mujoco.mj_step(model, data)
    np.testing.assert_allclose(state, np.concatenate([data.qpos, data.qvel]), atol=1e-12)
    assert reacher.ACTION_REPEAT == 2
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step(np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step(np.array([np.nan, 0.0]))


def test_reset_draws_states_in_the_documented_ranges(make):
    env = make(image_size=8)
    starts = np.stack([env.reset(seed=seed)[0]["state"] for seed in range(60)])
    assert np.all((starts[:, 0] >= -math.pi) & (starts[:, 0] < math.pi))
    assert np.all(np.abs(starts[:, 1]) <= reacher.WRIST_LIMIT)
    np.testing.assert_array_equal(starts[:, 2:], 0.0)
    assert starts[:, 0].min() < -2.5 and starts[:, 0].max() > 2.5  # spread over the whole ranges
    assert starts[:, 1].min() < -2.0 and starts[:, 1].max() > 2.0


def test_observation_layout_matches_names_and_spaces(make):
    env = make(image_size=64)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    assert obs["state"].dtype == np.float64 and obs["state"].shape == (4,)
    np.testing.assert_array_equal(obs["proprio"], obs["state"])
    assert ReacherEnv.state_names == ReacherEnv.proprio_names == (
        "shoulder_angle", "wrist_angle", "shoulder_velocity", "wrist_velocity")
    assert ReacherEnv.action_dim == 2 and env.action_space.shape == (2,)
    assert env.image_size == 64 and env.max_steps == 200
    assert info == {"n_contacts": 0, "success": False}
    assert env.step(np.ones(2))[4]["n_contacts"] == 0


@pytest.mark.parametrize("state", [
    [1.0, -2.0, 0.5, -3.0],
    [-math.pi, 2.7, 0.0, 0.0],
    [3.1, 0.0, -6.0, 4.0],
])
def test_set_state_reads_back_the_state_also_mid_episode(make, state):
    state = np.array(state)
    env = make()
    env.reset(seed=1)
    for _ in range(5):
        env.step(np.array([0.7, -0.3]))
    obs = env.set_state(state)
    np.testing.assert_array_equal(obs["state"], state)
    # After the teleport the env behaves exactly like a fresh one set to the same state.
    fresh = make()
    fresh.reset(seed=2)
    fresh_obs = fresh.set_state(state)
    np.testing.assert_array_equal(obs["pixels"], fresh_obs["pixels"])
    for _ in range(5):
        action = np.array([-0.5, 0.8])
        np.testing.assert_array_equal(env.step(action)[0]["state"], fresh.step(action)[0]["state"])


def test_the_shoulder_stays_wrapped_and_a_read_state_restores_the_simulation(make):
    env = make(image_size=16)
    env.reset(options={"state": np.array([3.0, 0.0, 0.0, 0.0])})
    states = [env.step(np.array([1.0, 0.0]))[0]["state"] for _ in range(60)]
    shoulder = np.array(states)[:, 0]
    assert np.all((shoulder >= -math.pi) & (shoulder < math.pi))
    assert np.any(np.diff(shoulder) < -math.pi)  # it went round through ±π
    middle = states[30]
    env.set_state(middle)
    replayed = [env.step(np.array([1.0, 0.0]))[0]["state"] for _ in range(29)]
    np.testing.assert_allclose(replayed, states[31:], atol=1e-9)
    # A shoulder outside [−π, π) is wrapped on the way in.
    np.testing.assert_allclose(env.set_state(np.array([2 * math.pi + 0.5, 0.1, 0.0, 0.0]))["state"],
                               [0.5, 0.1, 0.0, 0.0], atol=1e-12)


def test_reset_options_start_state_and_goal(make):
    env = make(image_size=16)
    start = np.array([0.5, 1.0, 0.0, 0.0])
    obs, info = env.reset(seed=0, options={"state": start, "goal_state": start})
    np.testing.assert_array_equal(obs["state"], start)
    assert info["success"]
    assert env.reset(seed=0)[1]["success"] is False and env.goal_state is None  # a new episode has no goal
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"start": start})


@pytest.mark.parametrize("bad, message", [
    (np.zeros(3), "shape"),
    (np.array([0.0, np.inf, 0.0, 0.0]), "finite"),
    (np.array([0.0, 3.5, 0.0, 0.0]), "wrist angle"),
])
def test_bad_states_goals_and_settings_raise_value_errors(make, bad, message):
    env = make(image_size=8)
    with pytest.raises(ValueError, match=message):
        env.set_state(bad)
    with pytest.raises(ValueError, match=message):
        env.set_goal_state(bad)
    with pytest.raises(ValueError, match="positive"):
        ReacherEnv(image_size=0)
    with pytest.raises(ValueError, match=r"known: reference, fingertip"):
        ReacherEnv(success_predicate="coverage")


def test_reward_terminated_and_truncated(make):
    env = make(image_size=8, max_steps=3)
    start = np.array([1.0, 0.5, 0.0, 0.0])
    env.reset(options={"state": start, "goal_state": start})
    _, reward, terminated, truncated, info = env.step(np.zeros(2))
    assert terminated and info["success"] and not truncated
    assert reward == pytest.approx(0.0, abs=1e-9)
    env.set_goal_state(start + np.array([0.3, -0.4, 0.0, 0.0]))
    _, reward, terminated, truncated, _ = env.step(np.zeros(2))
    assert not terminated and not truncated
    assert reward == pytest.approx(-0.5, abs=1e-6)
    assert env.step(np.zeros(2))[3]  # truncated at max_steps


def test_the_wrist_limit_holds(make):
    env = make(image_size=8)
    for direction in (1.0, -1.0):
        env.reset(options={"state": np.array([0.0, 0.0, 0.0, 0.0])})
        states = np.stack([env.step(np.array([0.0, direction]))[0]["state"] for _ in range(40)])
        wrist = direction * states[:, 1]
        # The limit is soft (MuJoCo's default, as in dm_control): the swinging hand overshoots it by a few
        # degrees, never near ±π, and full torque holds it ~5° past the limit, at rest.
        assert wrist.max() < reacher.WRIST_LIMIT + 0.16
        assert reacher.WRIST_LIMIT < wrist[-1] < reacher.WRIST_LIMIT + 0.1
        assert abs(states[-1, 3]) < 1e-3


# ------------------------------------------------------------------------------------------- predicates


def with_(state: np.ndarray, **changes: float) -> np.ndarray:
    state = state.copy()
    for name, value in changes.items():
        state[ReacherEnv.state_names.index(name)] = value
    return state


def test_angle_helpers_wrap():
    assert angle_difference(math.pi - 0.01, -math.pi + 0.01) == pytest.approx(-0.02)
    assert angle_difference(-math.pi, 0.0) == pytest.approx(math.pi)  # (−π, π]
    assert wrap_angle(math.pi) == pytest.approx(-math.pi)  # [−π, π)
    assert wrap_angle(-7.0) == pytest.approx(-7.0 + 2 * math.pi)
    assert wrap_angle(1.2345) == 1.2345  # unchanged bit for bit inside the range
    np.testing.assert_allclose(wrap_angle(np.array([4.0, -4.0])), [4.0 - 2 * math.pi, 2 * math.pi - 4.0])


def test_success_predicates_on_hand_built_states():
    assert success(GOAL, GOAL, "reference") and success(GOAL, GOAL, "fingertip")
    # The same place across the ±π seam: the upstream unwrapped check would fail this.
    seam_goal = np.array([-math.pi + 0.01, 0.3, 0.0, 0.0])
    seam = with_(seam_goal, shoulder_angle=math.pi - 0.01)
    assert success(seam, seam_goal, "reference") and success(seam, seam_goal, "fingertip")
    for joint in ("shoulder_angle", "wrist_angle"):
        base = GOAL[ReacherEnv.state_names.index(joint)]
        assert success(with_(GOAL, **{joint: base + 0.049}), GOAL, "reference")
        assert not success(with_(GOAL, **{joint: base - 0.051}), GOAL, "reference")
    # 0.08 rad at the shoulder moves the fingertip less than 0.025 m (its radius is below 0.24 m).
    shoulder_off = with_(GOAL, shoulder_angle=0.48)
    assert success(shoulder_off, GOAL, "fingertip") and not success(shoulder_off, GOAL, "reference")
    # The mirrored elbow reaches another place; a fingertip 3 cm away fails.
    assert not success(with_(GOAL, wrist_angle=1.0), GOAL, "fingertip")
    assert not success(with_(GOAL, shoulder_angle=0.4 + 0.03 / 0.2), GOAL, "fingertip")
    moving = with_(GOAL, shoulder_velocity=5.0, wrist_velocity=-3.0)  # velocities do not count
    assert success(moving, GOAL, "reference") and success(moving, GOAL, "fingertip")


def test_reference_implies_fingertip_on_random_pairs():
    rng = np.random.default_rng(0)
    goals = np.column_stack([rng.uniform(-math.pi, math.pi, 2000), rng.uniform(-2.7, 2.7, 2000),
                             np.zeros((2000, 2))])
    states = goals + np.column_stack([rng.uniform(-0.08, 0.08, (2000, 2)), np.zeros((2000, 2))])
    reference, tip = success(states, goals, "reference"), success(states, goals, "fingertip")
    assert reference.sum() > 500 and (tip & ~reference).sum() > 100
    assert not np.any(reference & ~tip)  # 0.05 rad per joint moves the fingertip at most 0.018 m


def test_success_is_vectorised_over_leading_axes():
    states = np.stack([GOAL, with_(GOAL, shoulder_angle=0.48), with_(GOAL, wrist_angle=1.0),
                       with_(GOAL, shoulder_angle=0.4 + 2 * math.pi)])
    expectations = {"reference": [True, False, False, True], "fingertip": [True, True, False, True]}
    for predicate, expected in expectations.items():
        result = success(states, GOAL, predicate)
        assert isinstance(result, np.ndarray) and result.dtype == bool
        np.testing.assert_array_equal(result, expected)
        goals = np.broadcast_to(GOAL, states.shape)
        np.testing.assert_array_equal(success(states, goals, predicate), expected)
        batched = success(np.stack([states, states[::-1]]), GOAL, predicate)
        np.testing.assert_array_equal(batched, [expected, expected[::-1]])
    assert isinstance(success(GOAL, GOAL, "fingertip"), bool)
    with pytest.raises(ValueError, match=r"predicate 'coverage' \(known: reference, fingertip\)"):
        success(GOAL, GOAL, "coverage")


def test_fingertip_kinematics_match_mujoco():
    rng = np.random.default_rng(1)
    for _ in range(10):
        angles = np.array([rng.uniform(-math.pi, math.pi), rng.uniform(-2.7, 2.7)])
        _, data = scene(angles)
        np.testing.assert_allclose(fingertip(angles), data.geom("finger").xpos[:2], atol=1e-12)
    np.testing.assert_allclose(fingertip(np.array([[0.0, 0.0], [math.pi / 2, math.pi / 2]])),
                               [[0.24, 0.0], [-0.12, 0.12]], atol=1e-12)


def test_joint_errors_and_final_errors():
    state = with_(GOAL, shoulder_angle=0.4 - 0.1, wrist_angle=-1.0 + 0.2)
    angle_error, fingertip_error = joint_errors(state, GOAL)
    assert angle_error == pytest.approx(0.2)
    assert fingertip_error == pytest.approx(np.linalg.norm(fingertip(state) - fingertip(GOAL)))
    errors = final_errors(state, GOAL)
    assert errors == {"joint_error": pytest.approx(0.2), "fingertip_error": pytest.approx(fingertip_error)}
    assert set(errors) == {"joint_error", "fingertip_error"} and 0.01 < errors["fingertip_error"] < 0.06
    seam = final_errors(np.array([math.pi - 0.01, 0.0, 0.0, 0.0]), np.array([-math.pi + 0.01, 0.0, 0, 0]))
    assert seam["joint_error"] == pytest.approx(0.02) and seam["fingertip_error"] < 0.005


# ------------------------------------------------------------------------------------------- rendering


def arm_mask(state: np.ndarray, size: int) -> np.ndarray:
    """Pixels showing an arm geom (from segmentation rendering), grown by one pixel for antialiasing."""
    model, data = scene(state[:2])
    model.vis.global_.offwidth = model.vis.global_.offheight = size
    renderer = mujoco.Renderer(model, size, size)
    try:
        renderer.enable_segmentation_rendering()
        renderer.update_scene(data, camera="fixed")
        geoms = renderer.render()[..., 0]
    finally:
        renderer.close()
    arm_ids = [model.geom(name).id for name in reacher.ARM_GEOMS]
    mask = np.isin(geoms, arm_ids)
    grown = mask.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            grown |= np.roll(mask, shift, axis=axis)
    return grown


def test_the_arm_is_drawn_where_the_kinematics_put_it_and_stands_out(make):
    env = make(image_size=64)
    state = np.array([0.0, 0.0, 0.0, 0.0])  # stretched out along +x: image row 32, right of centre
    frame = env.set_state(state)["pixels"].astype(int)
    floor = frame[8, 8]
    contrast = np.abs(frame - floor).sum(axis=-1)
    assert contrast[31:33, 36:55].max(axis=0).min() > 150  # each column along the arm stands out
    assert contrast[8:24, :].max() < 30 and contrast[40:56, :].max() < 30  # floor elsewhere
    mask = arm_mask(state, 64)
    assert 40 < mask.sum() < 300 and (contrast[mask].mean() > 5 * contrast[~mask].mean())


def test_the_goal_is_not_drawn(make):
    env = make(image_size=64)
    start, goal = np.array([0.2, 0.5, 0.0, 0.0]), np.array([-2.0, -1.0, 0.0, 0.0])
    plain = env.set_state(start)["pixels"]
    env.reset(options={"state": start, "goal_state": goal})
    np.testing.assert_array_equal(env.render(), plain)


def test_arm_color_changes_only_arm_pixels(make):
    env = make(image_size=64)
    state = np.array([0.7, -1.2, 0.0, 0.0])
    before = env.set_state(state)["pixels"].astype(int)
    env.set_arm_color((220, 60, 60))
    after = env.render().astype(int)
    changed = np.any(before != after, axis=-1)
    assert changed.sum() > 30
    assert not np.any(changed & ~arm_mask(state, 64))
    redder = (after[..., 0] - after[..., 1]) - (before[..., 0] - before[..., 1])
    assert np.all(redder[changed] >= 0) and redder[changed].mean() > 30  # orange → red
    np.testing.assert_array_equal(env.step(np.zeros(2))[0]["state"][:2], state[:2])  # physics untouched
    with pytest.raises(ValueError, match="arm colour"):
        env.set_arm_color((300, 0, 0))


# --------------------------------------------------------------------------------------------- policies


def run_policy(env: ReacherEnv, policy: object, seed: int, steps: int,
               start: np.ndarray | None = None) -> np.ndarray:
    obs, _ = env.reset(seed=seed, options=None if start is None else {"state": start})
    policy.reset(obs)
    states = [obs["state"]]
    for _ in range(steps):
        obs = env.step(policy.act(obs))[0]
        states.append(obs["state"])
    return np.stack(states)


def test_expert_reaches_its_joint_targets(make):
    env = make(image_size=8)
    expert = ReacherExpert(np.random.default_rng(0), action_noise=0.0)
    obs, _ = env.reset(seed=0)
    expert.reset(obs)
    durations, target, steps = [], None, 0
    for _ in range(300):
        action = expert.act(obs)
        assert action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
        if target is not None and not np.array_equal(expert.target, target):
            reached = np.abs(angle_difference(obs["state"][:2], target)).max() < expert.reach
            durations.append(steps if reached else math.inf)
            steps = 0
        target = expert.target.copy()
        steps += 1
        obs = env.step(action)[0]
    assert len(durations) >= 10
    assert np.isfinite(durations).all()  # every target was reached before the patience ran out
    assert np.median(durations) < 25


def test_expert_covers_the_joint_space_and_random_torques_less(make):
    env = make(image_size=8)

    def cells(policy_for_episode: Callable[[int], object]) -> tuple[float, np.ndarray, np.ndarray]:
        states = np.concatenate([run_policy(env, policy_for_episode(episode), episode, 100, np.zeros(4))
                                 for episode in range(20)])
        shoulder = np.floor((states[:, 0] + math.pi) / (2 * math.pi) * SHOULDER_BINS).astype(int)
        wrist = np.floor((states[:, 1] + reacher.WRIST_LIMIT) / (2 * reacher.WRIST_LIMIT) * WRIST_BINS)
        wrist = np.clip(wrist, 0, WRIST_BINS - 1).astype(int)
        filled = len(set(zip(shoulder.tolist(), wrist.tolist(), strict=True))) / (SHOULDER_BINS * WRIST_BINS)
        counts = np.bincount(shoulder, minlength=SHOULDER_BINS), np.bincount(wrist, minlength=WRIST_BINS)
        return filled, *counts

    # Every episode starts from the same state, so whatever is covered is the policy's doing.
    expert_filled, shoulder_counts, wrist_counts = cells(
        lambda episode: ReacherExpert(np.random.default_rng(episode), action_noise=0.2))
    assert expert_filled > 0.9
    assert shoulder_counts.min() > 30 and wrist_counts.min() > 30  # each 1-D bin well visited
    random_filled, _, _ = cells(lambda episode: UniformPolicy(2, np.random.default_rng(episode)))
    assert random_filled < 0.6 * expert_filled


def test_policies_are_deterministic_per_rng(make):
    env = make(image_size=8)
    for name in ("expert", "random"):
        runs = [run_policy(env, WORLD.make_policy(name, np.random.default_rng(seed), 0.2), 0, 20)
                for seed in (5, 5, 6)]
        np.testing.assert_array_equal(runs[0], runs[1])
        assert not np.array_equal(runs[0], runs[2])


# ------------------------------------------------------------------------------------------------ world


def test_registry_and_world_spec():
    env = make_env("reacher", image_size=32, max_steps=7)
    try:
        assert isinstance(env, ReacherEnv) and env.image_size == 32 and env.max_steps == 7
    finally:
        env.close()
    world = get_world("reacher")
    assert world is WORLD and world.env_class is ReacherEnv and world.name == "reacher"
    assert world.predicates == PREDICATES == ("reference", "fingertip") and world.headline == "reference"
    assert world.success is success
    assert set(world.policies) == {"expert", "random"}
    assert isinstance(world.make_policy("random", np.random.default_rng(0), 0.0), UniformPolicy)
    expert = world.make_policy("expert", np.random.default_rng(0), 0.1, gain=2.0, patience=10)
    assert isinstance(expert, ReacherExpert) and expert.gain == 2.0 and expert.patience == 10
    with pytest.raises(ValueError, match="invalid option"):
        world.make_policy("expert", np.random.default_rng(0), 0.1, push_speed=0.1)
    quantities = {q.name: q for q in world.probe_targets}
    assert list(quantities) == list(ReacherEnv.state_names)
    assert quantities["shoulder_angle"].is_angle and quantities["wrist_angle"].is_angle
    assert not quantities["shoulder_velocity"].is_angle and quantities["wrist_velocity"].columns == (3,)
    assert set(world.perturbations) == {"color", "teleport"} and world.perturbations["teleport"] is TELEPORT


def voe_context(episode: int) -> PerturbationContext:
    """The `voe` settings a perturbation reads (params.yaml's values), without `load_params`: that imports
    the models and so triton, which segfaults once MuJoCo's OSMesa has loaded Mesa's LLVM."""
    settings = SimpleNamespace(color=[220, 60, 60], seed=7)
    return PerturbationContext(settings, episode, lambda: make_env("reacher", image_size=64))


def test_color_perturbation_recolours_the_arm_before_the_step(make):
    color = WORLD.perturbations["color"]
    context = voe_context(0)
    value = color.prepare(context)
    assert value == tuple(context.settings.color)
    assert color.after_step is None and color.before_step is not None
    env, twin = make(), make()
    state = np.array([0.7, -1.2, 0.5, 0.5])
    before = env.set_state(state)["pixels"]
    twin.set_state(state)
    color.before_step(env, value)
    after, plain = env.step(np.zeros(2))[0], twin.step(np.zeros(2))[0]
    np.testing.assert_array_equal(after["state"], plain["state"])  # the physics is untouched
    changed = np.any(after["pixels"] != plain["pixels"], axis=-1)
    assert changed.sum() > 30 and not np.any(changed & ~arm_mask(after["state"], 64))
    assert env.arm_color == value and not np.array_equal(before, after["pixels"])


def test_teleport_moves_the_arm_to_a_reset_state(make):
    destination = teleport_destination(voe_context(5))
    np.testing.assert_array_equal(destination, teleport_destination(voe_context(5)))
    assert not np.array_equal(destination, teleport_destination(voe_context(6)))
    assert abs(destination[1]) <= reacher.WRIST_LIMIT and np.all(destination[2:] == 0.0)
    env = make()
    env.reset(seed=0)
    env.step(np.array([0.3, 0.3]))
    obs = TELEPORT.after_step(env, destination)
    np.testing.assert_array_equal(obs["state"], destination)
    np.testing.assert_array_equal(obs["pixels"], make().set_state(destination)["pixels"])


# ------------------------------------------------------------------------------------- simulator oracle


def test_simulate_reaches_the_state_stepping_reaches_without_rendering(make, monkeypatch):
    """The oracle's render-free rollout is the env's physics: the same final state as `set_state` and
    `step`, rendering left out (full torque: the shoulder wraps past π, the wrist runs into its limit)."""
    start, actions = np.array([2.8, 2.0, 0.0, 0.0]), np.ones((12, 2))
    env = make(image_size=16)
    env.set_state(start)
    stepped = np.stack([env.step(action)[0]["state"] for action in actions])
    assert (np.diff(stepped[:, 0]) < -math.pi).any() and stepped[:, 1].max() > reacher.WRIST_LIMIT
    simulator = make(image_size=16)
    simulator.set_goal_state(GOAL)
    monkeypatch.setattr(simulator, "render", lambda: pytest.fail("simulate rendered a frame"))
    np.testing.assert_array_equal(simulator.simulate(start, actions), stepped[-1])
    np.testing.assert_array_equal(simulator.goal_state, GOAL)


def test_state_cost_is_the_reference_predicate_in_units_of_its_tolerance():
    """Each joint's wrapped angle error over 0.05 rad, squared and summed: 1 at the border of one joint, 2
    at both; velocities do not count."""
    cost = WORLD.state_cost
    offsets = np.array([[0.0, 0.0, 0.0, 0.0], [0.05, 0.0, 3.0, -3.0], [0.0, -0.05, 0.0, 0.0],
                        [0.05, 0.05, 0.0, 0.0]])
    np.testing.assert_allclose(cost(GOAL + offsets, GOAL), [0.0, 1.0, 1.0, 2.0], atol=1e-12)
    across = np.array([math.pi - 0.02, 0.0, 0.0, 0.0])  # 0.05 rad from it across the wrap
    np.testing.assert_allclose(cost(np.array([[-math.pi + 0.03, 0.0, 0.0, 0.0]]), across), [1.0])
    states = GOAL + np.random.default_rng(0).normal(0.0, 0.04, (500, 4))
    costs, reached = cost(states, GOAL), success(states, GOAL, WORLD.headline)
    assert reached[costs < 1].all() and (costs[reached] < 2).all()


def test_the_simulator_oracle_reaches_a_goal_that_standing_still_does_not(make):
    """Both joints 0.3 rad away: the oracle (CEM on the true simulator, tiny settings) gets both within
    0.05 rad in a few steps; the zero action leaves the arm at rest."""
    plan = PlanConfig("cem", cost="last", horizon=1, receding=1, seed=0, precision="fp32", context_frames=1,
                      settings=cem.Config(samples=128, elites=8, iterations=4, init_std=1.0, warm_start=True))
    oracle = SimulatorOracleAgent(WORLD, {"image_size": 16}, ActionStats(mean=np.zeros(2), std=np.ones(2)),
                                  2, 5, plan, seed=0)
    start, goal = np.zeros(4), np.array([0.3, -0.3, 0.0, 0.0])
    goal_pixels = np.zeros((16, 16, 3), np.uint8)  # the oracle reads the goal state only
    try:
        reached, stayed = (run_episode(make(image_size=16), agent, start, goal, goal_pixels, 20,
                                       WORLD.predicates, WORLD.success) for agent in (oracle, ZeroAgent(2)))
    finally:
        oracle.simulator.close()
    assert reached.success(WORLD.headline) and not stayed.success(WORLD.headline)
