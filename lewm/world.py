"""What a world provides: one package `lewm/envs/<name>/` exporting `WORLD`, a `World` spec that the rest
of the code reads instead of knowing about any particular environment.

- the environment class (a `gymnasium.Env` with `pixels`/`state`/`proprio` observations, `set_state`,
  `set_goal_state`, `state_names`, `action_dim`; see docs/architecture.md);
- data-collection policies by name (`expert`, `random`), each built from an rng and an action-noise std;
- success predicates (pure, vectorised functions of state and goal state) and the headline one, which
  selects checkpoints and scores λ-search trials;
- final-error metrics of an episode (how far from the goal it ended, per physical quantity);
- probe targets: the physical quantities probes read from the state;
- VoE perturbations: events injected at one frame of a replayed trajectory;
- bodies: the agent and the objects it moves, as pose columns of the state with the world's extent, and
  what the env's `n_contacts` counts: what a dataset card (`lewm inspect`, lewm/data/card.py) reports;
- optionally, a state cost for the simulator oracle: planning with the true simulator instead of a world
  model, the ceiling of the planning protocol.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium
import numpy as np

Observation = dict[str, np.ndarray]
SuccessFn = Callable[[np.ndarray, np.ndarray, str], Any]
"""`success(state, goal_state, predicate)`: bool (or a bool array, vectorised over leading axes)."""
StateCost = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""`cost(states (N, S), goal_state (S,))` → (N,) costs of states against a goal (lower is closer)."""


class CollectionPolicy(Protocol):
    """A data-collection policy: observations in, float32 actions in [−1, 1]^A out; its randomness comes
    only from the rng it was built with."""

    def reset(self, obs: Observation) -> None: ...

    def act(self, obs: Observation) -> np.ndarray: ...


PolicyFactory = Callable[..., CollectionPolicy]
"""`factory(rng, action_noise, **options)` → a policy; options are the world's own (params
`data.<env>.policy_kwargs`)."""


class UniformPolicy:
    """I.i.d. uniform actions in [−1, 1]^action_dim (a `random` policy for any world)."""

    def __init__(self, action_dim: int, rng: np.random.Generator) -> None:
        self.action_dim, self.rng = action_dim, rng

    def reset(self, obs: Observation) -> None:
        """Nothing to reset."""

    def act(self, obs: Observation) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


# ------------------------------------------------------------------------------------------ probe targets

_AXIS_NAME = re.compile(r"^(?P<prefix>.+)_(?P<velocity>v?)(?P<axis>[xyz])$")


@dataclass(frozen=True)
class Quantity:
    """A probed physical quantity: state columns, read as (sin kθ, cos kθ) pairs when `is_angle`, with k =
    `folds` for a shape with a k-fold symmetry (a cube's yaw: 4), whose targets then stay continuous where
    the folded angle wraps."""

    name: str
    columns: tuple[int, ...]
    is_angle: bool = False
    folds: int = 1

    @property
    def dims(self) -> int:
        return 2 * len(self.columns) if self.is_angle else len(self.columns)

    def values(self, states: np.ndarray) -> np.ndarray:
        """Targets (N, dims) of this quantity from states (N, S)."""
        selected = np.asarray(states, dtype=np.float64)[:, list(self.columns)]
        if self.is_angle:
            return np.concatenate([np.sin(self.folds * selected), np.cos(self.folds * selected)], axis=1)
        return selected


def physical_quantities(state_names: list[str] | tuple[str, ...]) -> tuple[Quantity, ...]:
    """Quantities derived from `state_names` by one rule, in state order (a world's default probe targets):

    - a name ending in `angle` is its own quantity with targets (sin θ, cos θ): a raw wrapped angle jumps
      from 2π to 0, which no regression can follow;
    - names `<p>_x`, `<p>_y` [, `<p>_z`] form the position quantity `<p>_xy` [`<p>_xyz`];
    - names `<p>_vx`, `<p>_vy` [, `<p>_vz`] form the velocity quantity `<p>_velocity`;
    - any other name is a scalar quantity of its own.
    """
    angles: list[Quantity] = []
    groups: dict[tuple[str, str], list[int]] = {}  # (prefix, kind) → columns
    for column, name in enumerate(state_names):
        if name.endswith("angle"):
            angles.append(Quantity(name, (column,), is_angle=True))
            continue
        match = _AXIS_NAME.match(name)
        if match is None:
            groups.setdefault((name, "scalar"), []).append(column)
        else:
            kind = "velocity" if match["velocity"] else "position"
            groups.setdefault((match["prefix"], kind), []).append(column)
    grouped = [
        Quantity(_quantity_name(prefix, kind, [state_names[c] for c in columns]), tuple(columns))
        for (prefix, kind), columns in groups.items()
    ]
    return tuple(sorted([*grouped, *angles], key=lambda q: q.columns[0]))


def _quantity_name(prefix: str, kind: str, names: list[str]) -> str:
    """`agent` + agent_x, agent_y → `agent_xy`; `agent` + agent_vx, agent_vy → `agent_velocity`."""
    if kind == "scalar":
        return prefix
    if kind == "velocity":
        return f"{prefix}_velocity"
    return f"{prefix}_" + "".join(name[-1] for name in names)


# ------------------------------------------------------------------------------------------------ bodies

ROLES = ("agent", "object")


@dataclass(frozen=True)
class Body:
    """A body of the scene whose pose a dataset card covers: `role` is `agent` (what the actions drive) or
    `object` (what the agent moves); `position` its position quantity (x, y[, z] columns) with `extent`, the
    (low, high) range of the world along each of its axes (the card's occupancy grid spans the first two);
    `angles` its orientation angles (a shape with a k-fold symmetry covers 2π/k, `Quantity.folds`)."""

    name: str
    role: str
    position: Quantity | None = None
    extent: tuple[tuple[float, float], ...] = ()
    angles: tuple[Quantity, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"body {self.name}: role {self.role!r} is not one of {ROLES}")
        axes = 0 if self.position is None else len(self.position.columns)
        if self.position is not None and self.position.is_angle:
            raise ValueError(f"body {self.name}: position {self.position.name} is an angle")
        if len(self.extent) != axes or any(not low < high for low, high in self.extent):
            raise ValueError(f"body {self.name}: extent {self.extent} must hold one (low, high) range with "
                             f"low < high per position axis ({axes})")
        if not all(angle.is_angle and len(angle.columns) == 1 for angle in self.angles):
            raise ValueError(f"body {self.name}: angles must be single-column angle quantities")
        if axes == 0 and not self.angles:
            raise ValueError(f"body {self.name}: no position and no angle")


def quantities_by_name(quantities: tuple[Quantity, ...]) -> dict[str, Quantity]:
    """`{quantity.name: quantity}`, to pick a world's bodies out of its probe targets or
    `physical_quantities`."""
    return {quantity.name: quantity for quantity in quantities}


# ------------------------------------------------------------------------------------- VoE perturbations


@dataclass(frozen=True)
class PerturbationContext:
    """What a perturbation may use: the `voe` settings, the episode index and a factory of fresh
    environments built like the replayed one."""

    settings: Any  # lewm.config.VoEConfig
    episode: int
    make_env: Callable[[], gymnasium.Env]


@dataclass(frozen=True)
class Perturbation:
    """An event at frame k = `voe.perturb_step` of a replayed trajectory: `before_step` runs just before
    the step that renders frame k (e.g. a colour change), `after_step` right after it and may return the
    observation that replaces frame k (e.g. a teleport). `prepare(context)` computes, once per episode,
    the value both receive (e.g. the teleport destination)."""

    prepare: Callable[[PerturbationContext], Any] = lambda context: None
    before_step: Callable[[gymnasium.Env, Any], None] | None = None
    after_step: Callable[[gymnasium.Env, Any], Observation] | None = None


_TELEPORT_STREAM = 2  # SeedSequence spawn key of the teleport draws (0 and 1 are used by data generation)


def teleport_destination(context: PerturbationContext) -> np.ndarray:
    """A random valid state for the episode: a start state drawn by `reset` from a seed of its own
    (`voe.seed`, episode index), so every model sees the same teleport."""
    sequence = np.random.SeedSequence(context.settings.seed, spawn_key=(_TELEPORT_STREAM, context.episode))
    env = context.make_env()
    try:
        obs, _ = env.reset(seed=int(sequence.generate_state(1)[0]))
    finally:
        env.close()
    return obs["state"]


TELEPORT = Perturbation(
    prepare=teleport_destination,
    after_step=lambda env, destination: env.unwrapped.set_state(destination),
)
"""The whole scene jumps to a random valid state at rest: physically impossible, for any world."""


def color_change(setter: str) -> Perturbation:
    """An object takes the colour `voe.color` from the perturbed frame on, through the env's method
    `setter` (e.g. `set_block_color`); the physics is untouched."""
    return Perturbation(
        before_step=lambda env, color: getattr(env.unwrapped, setter)(color),
        prepare=lambda context: tuple(context.settings.color),
    )


# -------------------------------------------------------------------------------------------------- world


@dataclass(frozen=True)
class World:
    """A world's spec (see the module docstring); `lewm.envs.get_world(name)` returns it."""

    name: str
    env_class: type[gymnasium.Env]
    policies: Mapping[str, PolicyFactory]
    predicates: tuple[str, ...]
    headline: str  # the predicate that selects checkpoints and scores λ trials
    success: SuccessFn
    final_errors: Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (final state, goal) → errors
    probe_targets: tuple[Quantity, ...]
    perturbations: Mapping[str, Perturbation]
    bodies: tuple[Body, ...] = ()  # the agent and the objects it moves: what a dataset card covers
    # The simulator oracle's cost (lewm.planning.SimulatorOracleAgent): (states (N, S), goal (S,)) → (N,),
    # the headline predicate's errors in units of its tolerances (1 at the tolerance); None: no oracle. The
    # env then needs `simulate(state, actions) → state`, a render-free rollout of raw actions.
    state_cost: StateCost | None = None
    contacts: str = "contact points during the step"  # what the env's info["n_contacts"] counts

    def __post_init__(self) -> None:
        if self.headline not in self.predicates:
            raise ValueError(f"world {self.name}: headline predicate {self.headline!r} not in "
                             f"{self.predicates}")

    def make_env(self, **kwargs: Any) -> gymnasium.Env:
        """A new environment built with `kwargs` (e.g. `image_size`, `max_steps`)."""
        return self.env_class(**kwargs)

    def make_policy(self, name: str, rng: np.random.Generator, action_noise: float,
                    **options: Any) -> CollectionPolicy:
        """Data-collection policy `name`, drawing all its randomness from `rng`; `action_noise` is a std in
        action units (the expert adds it; a random policy ignores it)."""
        if action_noise < 0:
            raise ValueError(f"action_noise must be ≥ 0, got {action_noise}")
        if name not in self.policies:
            raise ValueError(f"unknown policy {name!r} for {self.name} (known: {', '.join(self.policies)})")
        try:
            return self.policies[name](rng, action_noise, **options)
        except TypeError as exc:
            raise ValueError(f"invalid option for the {name} policy of {self.name}: {exc}") from None
