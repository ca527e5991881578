"""SIGReg: the sketched isotropic-Gaussian regulariser of LeWM (reference §4.2).

The embeddings of each time step are projected on M random unit directions; on every 1-D projection the
Epps–Pulley statistic compares the empirical characteristic function (ECF) of the batch with that of
N(0, 1) on a 17-knot trapezoid grid over [−3, 3], weighted by exp(−t²/2) and scaled by the batch size N.
The value is the mean over time steps and directions: ≈ 1 for Gaussian embeddings at N = 128 (a
finite-sample floor, not 0), ≈ 51 for collapsed ones.

Under `torch.distributed` (training mode only) the batch axis spans all ranks, so every rank computes the
value of the concatenated global batch:
- the directions are sampled on every rank (so every rank's RNG advances identically) and rank 0's are
  broadcast, so all ranks project on the same directions;
- the per-rank ECF sums (cos and sin) are all-reduced and divided by the global N, which also scales the
  statistic. The all-reduce is differentiable (sum forward, sum backward).

Gradients under DDP: every rank holds the same loss value, and the backward all-reduce sums the gradient
of all W ranks' (identical) losses, so a rank's local gradient is W × the gradient of the global SIGReg
with respect to its own embeddings. DDP then *averages* parameter gradients over the W ranks, which cancels
the factor W: the update equals the single-process gradient on the concatenated batch, consistent with the
per-rank mean prediction loss, whose DDP average is the global mean.

Like SyncBatchNorm, nothing is communicated in eval mode: validation on rank 0 alone gets the local value.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum across ranks whose backward is the sum of the ranks' gradients (the adjoint of the forward).

    torch.distributed.nn.functional.all_reduce does the same but is deprecated (FutureWarning) in torch
    2.14, and its suggested replacement lives in a private module; this uses public collectives only.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        reduced = tensor.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> Tensor:
        grad = grad_output.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def epps_pulley_weights(knots: int, t_max: float) -> tuple[Tensor, Tensor]:
    """Knots t = linspace(0, t_max, K) and quadrature weights of ∫_{−t_max}^{t_max} e^{−t²/2} f(t) dt for an
    even f: trapezoid weights doubled by symmetry (dt at both ends, 2·dt inside) times e^{−t²/2}."""
    t = torch.linspace(0.0, t_max, knots, dtype=torch.float64)
    dt = t_max / (knots - 1)
    trapezoid = torch.full((knots,), 2 * dt, dtype=torch.float64)
    trapezoid[0] = trapezoid[-1] = dt
    return t.float(), (trapezoid * torch.exp(-(t**2) / 2)).float()


class SIGReg(nn.Module):
    """SIGReg of embeddings (B, T, D) or (B, D): mean over time steps and M fresh random directions of
    N · Σ_k W_k |φ̂_N(t_k) − e^{−t_k²/2}|², computed in float32 (also under autocast)."""

    def __init__(self, num_projections: int = 1024, knots: int = 17, t_max: float = 3.0) -> None:
        super().__init__()
        if num_projections < 1 or knots < 2 or t_max <= 0:
            raise ValueError(
                f"SIGReg needs num_projections ≥ 1, knots ≥ 2 and t_max > 0, got "
                f"{num_projections}, {knots}, {t_max}"
            )
        self.num_projections = num_projections
        t, weights = epps_pulley_weights(knots, t_max)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("weights", weights, persistent=False)
        self.register_buffer("gaussian_cf", torch.exp(-(t**2) / 2), persistent=False)

    def sample_directions(self, dim: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """M uniform unit directions as the columns of a (dim, M) matrix, the same on every rank."""
        directions = torch.randn(dim, self.num_projections, device=device, generator=generator)
        directions = directions / directions.norm(dim=0, keepdim=True)
        if self._distributed():
            dist.broadcast(directions, src=0)
        return directions

    def _distributed(self) -> bool:
        return self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def forward(self, embeddings: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The SIGReg value (a scalar); `generator` fixes the directions (tests), else the global RNG."""
        if embeddings.dim() == 2:
            embeddings = embeddings.unsqueeze(1)
        if embeddings.dim() != 3:
            raise ValueError(f"SIGReg expects embeddings (B, T, D) or (B, D), got {tuple(embeddings.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            per_step = embeddings.float().transpose(0, 1)  # (T, B, D): one test per time step
            directions = self.sample_directions(per_step.shape[-1], per_step.device, generator)
            projected = per_step @ directions  # (T, B, M)
            angles = projected.unsqueeze(-1) * self.t  # (T, B, M, K)
            ecf_sums = torch.stack([angles.cos().sum(dim=1), angles.sin().sum(dim=1)])  # (2, T, M, K)
            count = torch.tensor(float(per_step.shape[1]), device=per_step.device)
            if self._distributed():
                ecf_sums = _AllReduceSum.apply(ecf_sums)
                dist.all_reduce(count, op=dist.ReduceOp.SUM)
            cos_mean, sin_mean = ecf_sums / count
            error = (cos_mean - self.gaussian_cf) ** 2 + sin_mean**2  # (T, M, K)
            statistic = count * (error @ self.weights)  # (T, M)
            return statistic.mean()
