"""World models: one module per model, `lewm/models/<name>.py`, chosen by `model.name` in params.yaml.

A model module defines `Config` (the frozen dataclass of its `model.<name>` settings) and `Model`, an
`nn.Module` built as `Model(config, image_size, action_dim, frameskip, history)` that satisfies
`WorldModel`. Training, planning, probing and VoE use nothing else, so a model whose latent is one vector
per frame (D,) and one with patch tokens (N, D) both fit: code that reduces a latent flattens its trailing
axes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

from lewm.config import PLAN_COSTS

CostFn = Callable[[Tensor], Tensor]
"""Maps candidate action blocks `(S, H, block_dim)` to costs `(S,)`; lower is better."""


class WorldModel(Protocol):
    """What the rest of the code needs from a world model (an `nn.Module`).

    Two optional hooks serve a model built around a pretrained part that another stage makes (dinowm
    freezes a trained LeWM's ViT): its module may define `bind(config, env) -> Config`, settings completed
    from the files they name (called through `lewm.checkpoint.bind_settings` by `model_meta` and
    `lewm.train.run_config`, so a checkpoint rebuilds the model without those files and the run config
    follows them), and the model may define `load_pretrained()`, which training calls on the freshly built
    model to load those weights (a checkpoint of the model holds them itself).
    """

    image_size: int  # square frames, pixels
    action_dim: int  # raw action size A
    frameskip: int  # raw actions per action block (block_dim = frameskip·A)
    history: int  # context frames the predictor reads

    def encode(self, pixels: Tensor) -> Tensor:
        """uint8 `(B, [T,] 3, H, W)` frames → latents `(B, [T,] *latent_shape)`."""

    def predict(self, z: Tensor, action_blocks: Tensor) -> Tensor:
        """Teacher-forced next latents: `(B, T ≤ history, *latent)` and `(B, T, block_dim)` →
        `(B, T, *latent)`, output t being the prediction of latent t + 1."""

    def rollout(self, z_context: Tensor, action_blocks: Tensor, context_actions: Tensor | None = None
                ) -> Tensor:
        """Autoregressive imagination from observed latents `(1 or B, [C,] *latent)` under action blocks
        `(B, H, block_dim)` → the H imagined latents `(B, H, *latent)`; with C > 1 observed frames,
        `context_actions` `(1 or B, C−1, block_dim)` are the blocks executed between them."""

    def planning_cost(self, z_context: Tensor, z_goal: Tensor, context_actions: Tensor | None = None,
                      steps: str = "last") -> CostFn:
        """The cost a solver minimises to reach the goal latent `z_goal` from `z_context` (and, for several
        observed frames, the `context_actions` between them, as in `rollout`), scoring the imagined
        latents `steps` names (`plan.cost`: `last` or `every_step`, see `goal_distance_cost`);
        differentiable in the candidates when called with autograd on (the caller picks the autograd mode)."""

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The training loss of a batch of clips (lewm/data/clips.py): `total` (what is minimised) and the
        scalar terms to log, with gradients, then `embeddings` (detached, `(B, T, *latent)`) for the
        collapse diagnostics."""

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part, and `total`."""


def check_context_frames(context_frames: int, history: int) -> None:
    """Refuse a rollout context the predictor cannot read: 1 to its `history` observed frames."""
    if not 1 <= context_frames <= history:
        raise ValueError(f"context_frames must be in [1, {history}] (the model's history), "
                         f"got {context_frames}")


def goal_distance_cost(model: WorldModel, z_context: Tensor, z_goal: Tensor,
                       context_actions: Tensor | None = None, steps: str = "last") -> CostFn:
    """Cost of candidate blocks: squared distance, summed over every latent axis, between the latents the
    model imagines from `z_context` (with `context_actions`, see `WorldModel.rollout`) and `z_goal` (one
    frame's latent, with or without a batch axis).

    `steps="last"` scores the horizon's last latent only (the reference's cost): a plan may wander as long
    as it arrives at the end, and after each replan the target moves the horizon on. `steps="every_step"`
    sums the distance over all H imagined latents, which rewards plans that get close early and stay, what
    an "ever within tolerance" predicate and replanning after every block reward. For a one-block horizon
    the two are the same.

    The cost leaves the autograd mode to its caller: `LatentMPCAgent` runs it under `torch.inference_mode()`
    for sampling solvers and with autograd on, differentiable in the candidates, for gradient solvers."""
    if steps not in PLAN_COSTS:
        raise ValueError(f"steps must be one of {', '.join(PLAN_COSTS)}, got {steps!r}")

    def cost(candidates: Tensor) -> Tensor:
        imagined = model.rollout(z_context, candidates, context_actions).float()  # fp32 also under autocast
        if steps == "last":
            imagined = imagined[:, -1:]
        goal = z_goal.float().reshape(1, 1, *imagined.shape[2:])
        return (imagined - goal).pow(2).flatten(1).sum(dim=1)

    return cost
