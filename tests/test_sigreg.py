"""SIGReg against the magnitudes of reference §4.2 and an independent numpy computation, and as the LeWM
model's own regulariser (`model.sigreg`, configured by `model.lewm.sigreg_*`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from lewm.config import load_params
from lewm.models.lewm import LeWM
from lewm.sigreg import SIGReg, epps_pulley_weights


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _directions(seed: int, dim: int, num_projections: int) -> np.ndarray:
    """The directions SIGReg draws from a generator seeded with `seed` (same recipe as the module)."""
    raw = torch.randn(dim, num_projections, generator=_gen(seed)).double().numpy()
    return raw / np.linalg.norm(raw, axis=0, keepdims=True)


def _reference_sigreg(z: np.ndarray, directions: np.ndarray, knots: int = 17, t_max: float = 3.0) -> float:
    """Epps–Pulley SIGReg written as explicit loops over time steps, directions and knots."""
    batch, steps, _ = z.shape
    dt = t_max / (knots - 1)
    statistics = []
    for t in range(steps):
        for m in range(directions.shape[1]):
            h = z[:, t] @ directions[:, m]
            integral = 0.0
            for k in range(knots):
                u = k * dt
                weight = (dt if k in (0, knots - 1) else 2 * dt) * math.exp(-(u**2) / 2)
                ecf = np.exp(1j * u * h).mean()
                integral += weight * abs(ecf - math.exp(-(u**2) / 2)) ** 2
            statistics.append(batch * integral)
    return float(np.mean(statistics))


def test_weights_match_reference_table() -> None:
    expected = [0.1875, 0.36847, 0.34954, 0.32013, 0.28306, 0.24165, 0.19916, 0.15848, 0.12174, 0.0903,
                0.06466, 0.0447, 0.02983, 0.01923, 0.01196, 0.00718, 0.00208]  # fmt: skip
    _, weights = epps_pulley_weights(17, 3.0)
    np.testing.assert_allclose(weights.numpy(), expected, atol=1e-5)


def test_gaussian_embeddings_sit_at_the_finite_sample_floor() -> None:
    z = torch.randn(128, 4, 192, generator=_gen(0))
    value = float(SIGReg()(z, generator=_gen(1)))
    assert 1.0 < value < 1.15, value  # reference: ≈ 1.05–1.08; measured 1.07–1.08


def test_collapsed_embeddings_are_penalised() -> None:
    value = float(SIGReg()(torch.zeros(128, 4, 192), generator=_gen(1)))
    assert value == pytest.approx(51.46, abs=0.05)  # reference: ≈ 51.5, independent of the directions


def test_wrong_scale_is_penalised() -> None:
    z = 2.0 * torch.randn(128, 4, 192, generator=_gen(0))  # N(0, 4)
    value = float(SIGReg()(z, generator=_gen(1)))
    assert 30.0 < value < 34.0, value  # reference: ≈ 32; measured 31.6–32.0


def test_matches_independent_reference_computation() -> None:
    z = torch.randn(12, 3, 5, generator=_gen(0)).double() * 1.3 + 0.2
    expected = _reference_sigreg(z.numpy(), _directions(7, dim=5, num_projections=8))
    value = float(SIGReg(num_projections=8)(z, generator=_gen(7)))
    assert value == pytest.approx(expected, rel=1e-5)


def test_invariant_to_sample_order_and_accepts_2d_input() -> None:
    z = torch.randn(32, 16, generator=_gen(0))
    sigreg = SIGReg(num_projections=64)
    value = sigreg(z, generator=_gen(3))
    shuffled = sigreg(z[torch.randperm(32, generator=_gen(4))], generator=_gen(3))
    assert torch.allclose(value, shuffled, rtol=1e-5)


def test_directions_are_fresh_each_call() -> None:
    z = torch.randn(32, 2, 16, generator=_gen(0))
    sigreg = SIGReg(num_projections=4)
    assert sigreg(z) != sigreg(z)


def test_gradient_is_finite_and_autocast_is_ignored() -> None:
    z = torch.randn(16, 4, 8, generator=_gen(0), requires_grad=True)
    sigreg = SIGReg(num_projections=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sigreg(z.bfloat16(), generator=_gen(1))
    assert value.dtype == torch.float32
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_rejects_bad_shapes_and_settings() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        SIGReg()(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="knots"):
        SIGReg(knots=1)


def test_the_model_regularises_its_embeddings_with_the_configured_sigreg() -> None:
    """LeWM's `sigreg` term is SIGReg (settings `model.lewm.sigreg_*`) of the embeddings of every frame;
    the regulariser holds no weights, so checkpoints do not carry it."""
    settings = {"encoder_dim": 32, "encoder_depth": 1, "encoder_heads": 2, "embed_dim": 16,
                "projector_hidden": 32, "predictor_depth": 1, "sigreg_projections": 24, "sigreg_knots": 9,
                "sigreg_t_max": 2.5}
    cfg = load_params(overrides=[f"model.lewm.{k}={v}" for k, v in settings.items()]).model.settings
    torch.manual_seed(0)
    model = LeWM(cfg, image_size=16, action_dim=2, frameskip=1, history=2).eval()
    sigreg = model.sigreg
    assert (sigreg.num_projections, len(sigreg.t), float(sigreg.t[-1])) == (24, 9, 2.5)
    assert not list(sigreg.parameters()) and not any(k.startswith("sigreg") for k in model.state_dict())
    batch = {"pixels": torch.randint(0, 256, (6, 3, 3, 16, 16), dtype=torch.uint8, generator=_gen(0)),
             "actions": torch.randn(6, 3, 2, generator=_gen(1))}
    torch.manual_seed(5)
    out = model(batch)
    torch.manual_seed(5)  # the same directions: nothing else draws from the global RNG in eval mode
    expected = SIGReg(num_projections=24, knots=9, t_max=2.5)(out["embeddings"])
    assert out["embeddings"].shape == (6, 3, 16)
    torch.testing.assert_close(out["sigreg"], expected)
    other = dataclasses.replace(cfg, sigreg_t_max=3.0)
    assert float(LeWM(other, 16, 2, 1, 2).sigreg.t[-1]) == 3.0
