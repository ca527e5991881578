"""Embedding diagnostics: collapse detection (per-dimension std, effective rank) and the temporal
straightening metric of reference §11 (mean cosine of consecutive latent velocities)."""

from __future__ import annotations

import torch


def effective_rank(z: torch.Tensor) -> float:
    """Roy & Vetterli effective rank of a (N, D) embedding matrix: exp(entropy of normalised singular
    values) of the centred matrix: D for isotropic embeddings, 1 for embeddings on a line, 0 if constant.
    It is scale-invariant, so read it together with the embedding std: a collapse to a tiny noisy cloud
    keeps a high rank."""
    z = z.reshape(-1, z.shape[-1]).double()
    z = z - z.mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(z)
    total = singular.sum()
    if total <= 1e-12:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_stats(z: torch.Tensor) -> dict[str, float]:
    """Collapse diagnostics of a batch of embeddings (..., D): mean per-dimension std, effective rank and
    its fraction of D."""
    flat = z.reshape(-1, z.shape[-1]).float()
    rank = effective_rank(flat)
    return {
        "emb_std": float(flat.std(dim=0).mean()),
        "effective_rank": rank,
        "effective_rank_fraction": rank / flat.shape[-1],
    }


def straightness(z: torch.Tensor) -> float:
    """Mean cosine similarity between consecutive latent velocities v_t = z_{t+1} − z_t of trajectories
    z (B, T, D), T ≥ 3; 1 means straight latent paths (reference §11, Eq. 9)."""
    if z.shape[1] < 3:
        raise ValueError(f"straightness needs trajectories of at least 3 steps, got {z.shape[1]}")
    velocity = z[:, 1:] - z[:, :-1]
    cos = torch.nn.functional.cosine_similarity(velocity[:, :-1], velocity[:, 1:], dim=-1, eps=1e-8)
    return float(cos.mean())
