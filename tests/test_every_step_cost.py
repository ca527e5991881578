"""bench/every_step_cost.py: the every-step planning cost sums the goal distance over the imagined steps,
equals the reference's cost for a one-block horizon, and makes CEM reach the goal at once and stay."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lewm.models import goal_distance_cost
from lewm.solvers import cem
from lewm.solvers.cem import cem_plan

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "every_step_cost.py"
spec = importlib.util.spec_from_file_location("every_step_cost", SCRIPT)
every_step_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(every_step_cost)


class Integrator(torch.nn.Module):
    """A world model whose latent is a point moved by each action block: z_{h+1} = z_h + block."""

    history = 1

    def rollout(self, z_context: torch.Tensor, action_blocks: torch.Tensor,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        return z_context.reshape(1, 1, -1) + action_blocks.cumsum(dim=1)


def test_cost_sums_the_goal_distance_over_every_imagined_step():
    model = Integrator()
    wrapped = every_step_cost.EveryStepCost(model)
    assert wrapped.history == 1 and wrapped.rollout is not None  # the rest is the wrapped model's
    z_context, z_goal = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, -1.0]])
    candidates = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(0))
    imagined = candidates.cumsum(dim=1)
    expected = (imagined - z_goal).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(wrapped.planning_cost(z_context, z_goal)(candidates), expected)
    one_block = candidates[:, :1]  # a horizon of one block: the reference's last-step cost
    torch.testing.assert_close(wrapped.planning_cost(z_context, z_goal)(one_block),
                               goal_distance_cost(model, z_context, z_goal)(one_block))


def test_cem_on_the_every_step_cost_arrives_in_the_first_block_and_stays():
    model, z_context, z_goal = Integrator(), torch.zeros(1, 2), torch.tensor([[1.5, -0.5]])
    cfg = cem.Config(samples=300, elites=30, iterations=30, init_std=1.0, warm_start=False)
    cost = every_step_cost.EveryStepCost(model).planning_cost(z_context, z_goal)
    plan = cem_plan(cost, cfg, horizon=3, block_dim=2, generator=torch.Generator().manual_seed(0)).plan
    torch.testing.assert_close(plan[0], z_goal[0], atol=0.05, rtol=0)
    torch.testing.assert_close(plan[1:], torch.zeros(2, 2), atol=0.05, rtol=0)
