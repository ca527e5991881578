"""The world seam: worlds by name, Push-T's spec (predicates, success, final errors, probe targets, VoE
perturbations), the `World` checks, the probe-target naming rule and part discovery."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from lewm.config import load_params
from lewm.envs import get_world, make_env, world_names
from lewm.envs.pusht import PushTEnv
from lewm.envs.pusht import env as pusht
from lewm.parts import part_module, part_names
from lewm.world import (
    TELEPORT,
    PerturbationContext,
    Quantity,
    UniformPolicy,
    World,
    physical_quantities,
    teleport_destination,
)

GOAL = np.array([100.0, 100.0, 200.0, 200.0, 0.05, 0.0, 0.0])
PUSHT = get_world("pusht")


# ------------------------------------------------------------------------------------------ worlds by name


def test_world_names_lists_the_world_packages() -> None:
    assert world_names() == ("cube", "pusht", "reacher", "tworoom")
    assert PUSHT.name == "pusht" and PUSHT.env_class is PushTEnv


def test_an_unknown_world_is_a_value_error_naming_the_known_ones() -> None:
    known = r"\(known: cube, pusht, reacher, tworoom\)"
    with pytest.raises(ValueError, match=r"unknown environment 'nope' " + known):
        get_world("nope")
    with pytest.raises(ValueError, match=known):
        make_env("nope")


def test_make_env_passes_its_arguments() -> None:
    env = PUSHT.make_env(image_size=32, max_steps=5)
    assert isinstance(env, PushTEnv) and (env.image_size, env.max_steps) == (32, 5)
    assert isinstance(make_env("pusht"), PushTEnv)


# ---------------------------------------------------------------------------------------- Push-T's spec


def test_pusht_headline_is_one_of_its_predicates() -> None:
    assert PUSHT.predicates == pusht.PREDICATES == ("reference", "block")
    assert PUSHT.headline == "reference" and PUSHT.headline in PUSHT.predicates


def test_pusht_success_vectorised_agrees_with_per_state_calls() -> None:
    rng = np.random.default_rng(0)
    # States scattered around the goal so that both outcomes occur for every predicate.
    states = GOAL + rng.normal(0.0, [12.0, 12.0, 12.0, 12.0, 0.3, 50.0, 50.0], size=(64, 7))
    goals = GOAL + rng.normal(0.0, 3.0, size=(64, 7))
    for predicate in PUSHT.predicates:
        vectorised = PUSHT.success(states, goals, predicate)
        per_state = [PUSHT.success(state, goal, predicate) for state, goal in zip(states, goals, strict=True)]
        assert vectorised.dtype == bool and vectorised.shape == (64,)
        assert all(isinstance(value, bool) for value in per_state)
        np.testing.assert_array_equal(vectorised, per_state)
        assert 0 < vectorised.sum() < 64
        grid = PUSHT.success(states.reshape(8, 8, 7), goals.reshape(8, 8, 7), predicate)
        np.testing.assert_array_equal(grid, vectorised.reshape(8, 8))
    # `block` ignores the agent, so it succeeds wherever `reference` does.
    reference, block = (PUSHT.success(states, goals, p) for p in ("reference", "block"))
    assert np.all(block[reference])


def test_pusht_final_errors_on_a_known_state_goal_pair() -> None:
    state = GOAL.copy()
    state[2:5] = [203.0, 204.0, 2 * math.pi - 0.05]  # 5 px off, 0.1 rad off across the wrap
    state[0:2] = [400.0, 450.0]  # the agent does not count
    errors = PUSHT.final_errors(state, GOAL)
    assert set(errors) == {"block_pos_error", "block_angle_error"}
    assert all(isinstance(value, float) for value in errors.values())
    assert errors["block_pos_error"] == pytest.approx(5.0)
    assert errors["block_angle_error"] == pytest.approx(0.1)  # |angle| also when the state is behind
    behind = GOAL.copy()
    behind[4] = 0.05 - 0.2
    assert PUSHT.final_errors(behind, GOAL) == {"block_pos_error": 0.0,
                                                "block_angle_error": pytest.approx(0.2)}


def test_pusht_probe_targets() -> None:
    names = [quantity.name for quantity in PUSHT.probe_targets]
    assert names == ["agent_xy", "block_xy", "block_angle", "agent_velocity"]
    by_name = {quantity.name: quantity for quantity in PUSHT.probe_targets}
    assert by_name["block_angle"].is_angle and by_name["block_angle"].dims == 2
    assert by_name["agent_velocity"].columns == (5, 6) and by_name["block_xy"].columns == (2, 3)
    np.testing.assert_allclose(by_name["block_xy"].values(GOAL[None]), [[200.0, 200.0]])


def voe_context(episode: int, seed: int | None = None) -> PerturbationContext:
    settings = load_params().voe
    if seed is not None:
        settings = dataclasses.replace(settings, seed=seed)
    return PerturbationContext(settings, episode, lambda: make_env("pusht", image_size=64))


def test_pusht_perturbations_are_color_and_teleport() -> None:
    assert set(PUSHT.perturbations) == {"color", "teleport"}
    assert PUSHT.perturbations["teleport"] is TELEPORT


def test_color_perturbation_recolours_the_block_before_the_step() -> None:
    color = PUSHT.perturbations["color"]
    context = voe_context(0)
    value = color.prepare(context)
    assert value == tuple(context.settings.color) == (220, 60, 60)
    assert color.after_step is None and color.before_step is not None
    env = make_env("pusht", image_size=64)
    state = np.array([100.0, 400.0, 300.0, 150.0, 0.7, 0.0, 0.0])
    before = env.unwrapped.set_state(state)["pixels"]
    color.before_step(env, value)
    after = env.step(np.zeros(2))[0]
    np.testing.assert_allclose(after["state"][2:5], state[2:5])  # the physics is untouched
    cog = (pusht.block_center_of_gravity(state[2:4], state[4]) * 64 / 512).astype(int)
    assert tuple(after["pixels"][cog[1], cog[0]]) == (220, 60, 60)
    assert tuple(before[cog[1], cog[0]]) == pusht.BLOCK_COLOR


def test_teleport_destination_is_deterministic_per_seed_and_episode() -> None:
    first = teleport_destination(voe_context(3))
    np.testing.assert_array_equal(first, teleport_destination(voe_context(3)))
    np.testing.assert_array_equal(first, TELEPORT.prepare(voe_context(3)))
    others = [teleport_destination(voe_context(episode)) for episode in (0, 1, 2, 4)]
    assert all(not np.array_equal(first[2:5], other[2:5]) for other in others)
    assert not np.array_equal(first, teleport_destination(voe_context(3, seed=8)))
    # A valid start state at rest, like reset's.
    assert np.all((first[2:4] >= 100) & (first[2:4] <= 400)) and np.all(first[5:7] == 0.0)


def test_teleport_moves_the_scene_after_the_step() -> None:
    destination = teleport_destination(voe_context(5))
    env = make_env("pusht", image_size=64)
    env.reset(seed=0)
    env.step(np.array([0.3, 0.3]))
    assert TELEPORT.before_step is None
    obs = TELEPORT.after_step(env, destination)
    np.testing.assert_allclose(obs["state"], destination, atol=1e-6)
    fresh = make_env("pusht", image_size=64).unwrapped.set_state(destination)
    np.testing.assert_array_equal(obs["pixels"], fresh["pixels"])


# ---------------------------------------------------------------------------------------- the World class


def tiny_world(**changes: object) -> World:
    """A world with one uniform policy taking no options, built on Push-T's env."""
    spec = dict(
        name="tiny",
        env_class=PushTEnv,
        policies={"random": lambda rng, action_noise: UniformPolicy(3, rng)},
        predicates=("near", "far"),
        headline="near",
        success=lambda state, goal, predicate: True,
        final_errors=lambda state, goal: {},
        probe_targets=(),
        perturbations={},
    )
    return World(**{**spec, **changes})


def test_world_rejects_a_headline_outside_its_predicates() -> None:
    assert tiny_world().headline == "near"
    with pytest.raises(ValueError, match=r"world tiny: headline predicate 'best' not in \('near', 'far'\)"):
        tiny_world(headline="best")


def test_world_make_policy_checks_name_noise_and_options() -> None:
    world, rng = tiny_world(), np.random.default_rng(0)
    action = world.make_policy("random", rng, 0.0).act({})
    assert action.dtype == np.float32 and action.shape == (3,) and np.all(np.abs(action) <= 1.0)
    with pytest.raises(ValueError, match=r"unknown policy 'expert' for tiny \(known: random\)"):
        world.make_policy("expert", rng, 0.0)
    with pytest.raises(ValueError, match="invalid option for the random policy of tiny"):
        world.make_policy("random", rng, 0.0, speed=1.0)
    with pytest.raises(ValueError, match="action_noise must be ≥ 0, got -1"):
        world.make_policy("random", rng, -1)


# ------------------------------------------------------------------------------------ physical quantities


def test_physical_quantities_rules() -> None:
    names = ["arm_x", "arm_y", "arm_z", "lid_angle", "arm_vx", "arm_vy", "arm_vz", "mass", "cart_x", "tilt"]
    quantities = physical_quantities(names)
    assert quantities == (
        Quantity("arm_xyz", (0, 1, 2)),
        Quantity("lid_angle", (3,), is_angle=True),
        Quantity("arm_velocity", (4, 5, 6)),
        Quantity("mass", (7,)),
        Quantity("cart_x", (8,)),
        Quantity("tilt", (9,)),
    )
    assert [q.dims for q in quantities] == [3, 2, 3, 1, 1, 1]
    states = np.arange(20, dtype=float).reshape(2, 10)
    angle = quantities[1].values(states)
    np.testing.assert_allclose(angle, [[math.sin(3), math.cos(3)], [math.sin(13), math.cos(13)]])
    np.testing.assert_array_equal(quantities[2].values(states), states[:, 4:7])


def test_physical_quantities_keep_state_order_and_separate_prefixes() -> None:
    quantities = physical_quantities(("ball_angle", "b_vy", "a_y", "b_vx", "a_x"))
    assert [(q.name, q.columns) for q in quantities] == [
        ("ball_angle", (0,)), ("b_velocity", (1, 3)), ("a_yx", (2, 4)),
    ]


# ------------------------------------------------------------------------------------------------- parts


def test_part_names_ignore_private_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fakeparts"
    (package / "beta").mkdir(parents=True)
    for path in ("__init__.py", "alpha.py", "_helper.py", "beta/__init__.py", "gamma.txt"):
        (package / path).write_text("")
    (package / "_private_pkg").mkdir()
    (package / "_private_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert part_names("fakeparts") == ("alpha", "beta")
    assert part_module("fakeparts", "alpha", "thing").__name__ == "fakeparts.alpha"
    with pytest.raises(ValueError, match=r"unknown thing '_helper' \(known: alpha, beta\)"):
        part_module("fakeparts", "_helper", "thing")
    assert part_names("lewm.envs") == world_names()
