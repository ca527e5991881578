"""The PLDM baseline (reference §12): LeWM's JEPA (lewm/models/lewm.py) plus an inverse-dynamics MLP,
trained with PLDM's seven-term objective (the paper's Eq. 8) instead of SIGReg:

    L = L_pred + α L_var + β L_cov + γ L_time-sim + ζ L_time-var + ν L_time-cov + μ L_IDM

- `var`, `cov`: VICReg's variance hinge and off-diagonal covariance across the batch, per time step;
- `time_var`, `time_cov`: the same two terms across the frames of each clip, per clip;
- `time_sim`: squared difference of consecutive embeddings, element-wise mean (as L_pred; SWM's
  `temp_align`, the normalisation the paper's coefficients were tuned with);
- `idm`: MSE of idm(z_t, z_{t+1}) against the action block a_t executed between the two frames.

Every term is computed and logged whatever its coefficient (the paper compares the curves of all seven),
and every term enters `total`, so a zero coefficient leaves no parameter unused under DDP. The variance,
covariance and time-similarity statistics are computed in float32, also under bf16 autocast (as SIGReg),
over each process's own batch under DDP. Encoding, prediction, rollouts and the planning cost are LeWM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lewm.config import ConfigError
from lewm.models.lewm import JEPA, MLP, Architecture

VARIANCE_EPS = 1e-4  # inside the square root of the variance hinge (SWM's VCReg)
COEFFICIENTS = ("alpha", "beta", "gamma", "zeta", "nu", "mu")


@dataclass(frozen=True)
class Config(Architecture):
    """`model.pldm`: LeWM's architecture, the IDM's hidden width and the six coefficients of Eq. 8
    (the paper's Table 2: α = 18, β = 12, γ = 0.2, ζ = 0.7, ν = 0, μ = 0)."""

    idm_hidden: int
    alpha: float  # L_var
    beta: float  # L_cov
    gamma: float  # L_time-sim
    zeta: float  # L_time-var
    nu: float  # L_time-cov
    mu: float  # L_IDM

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"model.pldm.{name}: a loss coefficient must be ≥ 0, got {value}")
        if self.idm_hidden < 1:
            raise ConfigError(f"model.pldm.idm_hidden: must be ≥ 1, got {self.idm_hidden}")


def _centered(x: Tensor) -> Tensor:
    """`x` (G, N, D) centred over its N samples, with a clear error when there are fewer than two."""
    if x.shape[1] < 2:
        raise ValueError(
            f"PLDM's variance and covariance terms need ≥ 2 samples, got {x.shape[1]} (batch terms: clips "
            f"per batch and process; time terms: frames per clip)"
        )
    return x - x.mean(dim=1, keepdim=True)


def variance_loss(x: Tensor) -> Tensor:
    """VICReg's variance hinge: max(0, 1 − sqrt(Var + ε)) of each of the D dimensions over the N samples of
    each of the G groups of `x` (G, N, D), averaged over groups and dimensions."""
    std = (_centered(x).pow(2).sum(dim=1) / (x.shape[1] - 1) + VARIANCE_EPS).sqrt()
    return F.relu(1 - std).mean()


def covariance_loss(x: Tensor) -> Tensor:
    """VICReg's covariance term: the sample covariance (D, D) over the N samples of each group of `x`
    (G, N, D), its squared off-diagonal entries summed and normalised by D² − D, averaged over groups."""
    centred = _centered(x)
    samples, dim = x.shape[1:]
    cov = centred.transpose(1, 2) @ centred / (samples - 1)  # (G, D, D)
    off_diagonal = cov.pow(2).sum(dim=(1, 2)) - cov.diagonal(dim1=1, dim2=2).pow(2).sum(dim=1)
    return (off_diagonal / (dim * dim - dim)).mean()


def time_similarity_loss(z: Tensor) -> Tensor:
    """Mean squared difference between consecutive embeddings of `z` (B, T, D), element-wise."""
    return (z[:, 1:] - z[:, :-1]).pow(2).mean()


class PLDM(JEPA):
    """LeWM's JEPA with an inverse-dynamics MLP (2·D → idm_hidden → frameskip·A) and PLDM's objective."""

    parts = (*JEPA.parts, "idm")

    def __init__(
        self, cfg: Config, image_size: int, action_dim: int, frameskip: int, history: int
    ) -> None:
        super().__init__(cfg, image_size, action_dim, frameskip, history)
        self.idm = MLP(2 * cfg.embed_dim, cfg.idm_hidden, frameskip * action_dim)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses of one batch of clips (`embed_and_predict`): `total`, the seven terms `pred`, `var`,
        `cov`, `time_sim`, `time_var`, `time_cov`, `idm` (scalars with gradients) and the detached
        `embeddings` (B, T, D). The action block of frame t (`actions[:, t]`) leads to frame t + 1."""
        embeddings, pred = self.embed_and_predict(batch)
        predicted_actions = self.idm(torch.cat([embeddings[:, :-1], embeddings[:, 1:]], dim=-1))
        terms = {"pred": pred}
        with torch.autocast(device_type=embeddings.device.type, enabled=False):  # statistics in float32
            z = embeddings.float()
            terms["var"] = variance_loss(z.transpose(0, 1))  # (T, B, D): one group per time step
            terms["cov"] = covariance_loss(z.transpose(0, 1))
            terms["time_sim"] = time_similarity_loss(z)
            terms["time_var"] = variance_loss(z)  # one group per clip, its frames the samples
            terms["time_cov"] = covariance_loss(z)
        terms["idm"] = (predicted_actions - batch["actions"][:, :-1]).pow(2).mean()
        c = self.cfg
        total = (pred + c.alpha * terms["var"] + c.beta * terms["cov"] + c.gamma * terms["time_sim"]
                 + c.zeta * terms["time_var"] + c.nu * terms["time_cov"] + c.mu * terms["idm"])
        return {**terms, "total": total, "embeddings": embeddings.detach()}


Model = PLDM
"""The class `model.name: pldm` builds (lewm/checkpoint.py)."""
