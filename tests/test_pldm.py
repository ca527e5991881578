"""The PLDM baseline (lewm/models/pldm.py, reference §12): each term of Eq. 8 on embeddings whose value is
known, the weighted objective, training (directly and through `lewm.train.train`), checkpoints, params."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lewm.checkpoint import load_model, model_meta, save_checkpoint
from lewm.config import ConfigError, load_params
from lewm.data.clips import ActionStats
from lewm.models.lewm import JEPA, Architecture
from lewm.models.pldm import (
    PLDM,
    VARIANCE_EPS,
    Config,
    Model,
    covariance_loss,
    time_similarity_loss,
    variance_loss,
)
from lewm.train import train

IMAGE, ACTION_DIM, FRAMESKIP, HISTORY = 32, 2, 5, 3
BLOCK = ACTION_DIM * FRAMESKIP
TERMS = ("pred", "var", "cov", "time_sim", "time_var", "time_cov", "idm")
TINY_OVERRIDES = [
    "model.name=pldm", "model.pldm.encoder_depth=1", "model.pldm.encoder_dim=32",
    "model.pldm.encoder_heads=2", "model.pldm.patch_size=16", "model.pldm.embed_dim=16",
    "model.pldm.projector_hidden=32", "model.pldm.predictor_depth=1", "model.pldm.predictor_heads=2",
    "model.pldm.predictor_head_dim=8", "model.pldm.predictor_mlp_dim=32", "model.pldm.idm_hidden=32",
]
TINY: Config = load_params(overrides=TINY_OVERRIDES).model.settings


def _model(cfg: Config = TINY) -> PLDM:
    torch.manual_seed(0)
    return PLDM(cfg, IMAGE, ACTION_DIM, FRAMESKIP, HISTORY)


def _batch(batch: int = 6, frames: int = HISTORY + 1, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixels": torch.randint(0, 256, (batch, frames, 3, IMAGE, IMAGE), dtype=torch.uint8,
                                generator=generator),
        "actions": torch.randn(batch, frames, BLOCK, generator=generator),
    }


# ------------------------------------------------------------------------------------------ the terms


def test_variance_hinge_is_zero_at_unit_std_and_one_minus_std_below():
    samples = torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(0))
    unit = (samples - samples.mean(1, keepdim=True)) / samples.std(1, keepdim=True)  # unbiased std 1
    assert variance_loss(unit) == 0
    assert variance_loss(3 * unit) == 0  # a hinge: spread beyond 1 costs nothing
    torch.testing.assert_close(variance_loss(0.5 * unit), torch.tensor(1 - math.sqrt(0.25 + VARIANCE_EPS)))
    collapsed = torch.ones(3, 50, 8)
    torch.testing.assert_close(variance_loss(collapsed), torch.tensor(1 - math.sqrt(VARIANCE_EPS)))


def test_covariance_is_zero_when_decorrelated_and_positive_when_correlated():
    a = torch.tensor([1.0, -1.0, 1.0, -1.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])  # centred and orthogonal to a
    assert covariance_loss(torch.stack([a, b], dim=-1)[None]) == 0
    # identical dimensions: cov = [[4/3, 4/3], [4/3, 4/3]]; (2 · (4/3)²) / (D² − D = 2) = 16/9
    torch.testing.assert_close(covariance_loss(torch.stack([a, a], dim=-1)[None]), torch.tensor(16 / 9))
    # the mean over groups: a decorrelated group and a correlated one
    groups = torch.stack([torch.stack([a, b], dim=-1), torch.stack([a, a + 5], dim=-1)])
    torch.testing.assert_close(covariance_loss(groups), torch.tensor(8 / 9))


def test_time_similarity_is_the_elementwise_mean_squared_step():
    z = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]])  # steps (1, 0) and (0, 2)
    torch.testing.assert_close(time_similarity_loss(z), torch.tensor(5 / 4))
    assert time_similarity_loss(torch.ones(4, 3, 2)) == 0


def test_batch_and_time_terms_use_their_own_axis():
    """Embeddings that differ between clips but stay still within each clip: collapsed across time only."""
    clips = torch.arange(8.0)[:, None, None] * torch.tensor([1.0, -1.0]) * 10  # (B=8, 1, D=2)
    z = clips.expand(8, 4, 2)  # T = 4 identical frames per clip
    torch.testing.assert_close(variance_loss(z), torch.tensor(1 - math.sqrt(VARIANCE_EPS)))  # across time
    assert variance_loss(z.transpose(0, 1)) == 0  # across the batch: std ≫ 1
    assert covariance_loss(z) == 0  # no variation in time, no covariance
    assert covariance_loss(z.transpose(0, 1)) > 0  # the two dimensions are anti-correlated across clips


def test_fewer_than_two_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="≥ 2 samples"):
        variance_loss(torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="≥ 2 samples"):
        covariance_loss(torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="more than history"):
        _model()(_batch(frames=HISTORY))


# -------------------------------------------------------------------------------------- the objective


def test_model_terms_and_weighted_total():
    cfg = dataclasses.replace(TINY, alpha=1.5, beta=0.25, gamma=2.0, zeta=0.5, nu=3.0, mu=0.75)
    model = _model(cfg).eval()
    batch = _batch()
    out = model(batch)
    assert set(out) == {*TERMS, "total", "embeddings"}
    assert not out["embeddings"].requires_grad and out["embeddings"].shape == (6, HISTORY + 1, 16)
    z = out["embeddings"]
    torch.testing.assert_close(out["var"], variance_loss(z.transpose(0, 1)))
    torch.testing.assert_close(out["cov"], covariance_loss(z.transpose(0, 1)))
    torch.testing.assert_close(out["time_sim"], time_similarity_loss(z))
    torch.testing.assert_close(out["time_var"], variance_loss(z))
    torch.testing.assert_close(out["time_cov"], covariance_loss(z))
    with torch.no_grad():
        actions = model.idm(torch.cat([z[:, :-1], z[:, 1:]], dim=-1))
    torch.testing.assert_close(out["idm"], (actions - batch["actions"][:, :-1]).pow(2).mean())
    _, pred = model.embed_and_predict(batch)
    torch.testing.assert_close(out["pred"], pred)
    expected = (out["pred"] + 1.5 * out["var"] + 0.25 * out["cov"] + 2.0 * out["time_sim"]
                + 0.5 * out["time_var"] + 3.0 * out["time_cov"] + 0.75 * out["idm"])
    torch.testing.assert_close(out["total"], expected)
    assert all(out[key].dim() == 0 and torch.isfinite(out[key]) for key in (*TERMS, "total"))


def test_statistics_are_float32_under_bf16_autocast():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        reference = model(batch)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = model(batch)
    for key in ("var", "cov", "time_sim", "time_var", "time_cov"):
        assert out[key].dtype == torch.float32, key
        assert float(out[key]) == pytest.approx(float(reference[key]), rel=0.1, abs=1e-3), key


def test_zero_coefficients_leave_no_parameter_unused():
    """ν = μ = 0 (the paper's defaults): the terms are still computed and every parameter, the IDM's too,
    gets a gradient, so DDP finds no unused parameter."""
    assert (TINY.nu, TINY.mu) == (0.0, 0.0)
    model = _model().train()
    out = model(_batch())
    assert out["idm"] > 0 and out["time_cov"] >= 0
    out["total"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad.abs().sum() == 0 for p in model.idm.parameters())


def test_a_few_steps_reduce_the_loss_with_gradients_everywhere():
    model = _model(dataclasses.replace(TINY, mu=1.0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, losses = _batch(batch=8), []
    for _ in range(8):
        out = model(batch)
        optimizer.zero_grad()
        out["total"].backward()
        optimizer.step()
        losses.append(float(out["total"].detach()))
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    # the last step's gradients (at init the action encoder gets none: AdaLN-zero gates are closed)
    for part in ("encoder", "projector", "predictor", "pred_proj", "action_encoder", "idm"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(torch.isfinite(g).all() for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part


def test_pldm_is_lewm_architecture_with_an_idm():
    model = _model()
    assert Model is PLDM and isinstance(model, JEPA)
    assert isinstance(TINY, Architecture)
    counts = model.num_parameters()
    assert set(counts) == {"encoder", "projector", "predictor", "pred_proj", "action_encoder", "idm", "total"}
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    linear_in, linear_out = model.idm.net[0], model.idm.net[-1]
    assert (linear_in.in_features, linear_in.out_features, linear_out.out_features) == (32, 32, BLOCK)
    z = model.eval().encode(_batch()["pixels"])
    assert model.rollout(z[:, 0], torch.randn(6, 4, BLOCK)).shape == (6, 4, 16)
    assert model.planning_cost(z[:1, 0], z[0, -1])(torch.randn(5, 4, BLOCK)).shape == (5,)


# ------------------------------------------------------------------------------- checkpoints and params


def test_checkpoint_round_trip_rebuilds_a_pldm(tmp_path: Path):
    model = _model().eval()
    meta = model_meta("pusht", "pldm", TINY, IMAGE, ACTION_DIM, FRAMESKIP, HISTORY,
                      ActionStats(np.zeros(ACTION_DIM), np.ones(ACTION_DIM)))
    save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(), "meta": meta, "step": 7})
    loaded = load_model(tmp_path / "model.pt")
    assert isinstance(loaded.model, PLDM) and not loaded.model.training
    assert loaded.meta.model == "pldm" and loaded.meta.settings["alpha"] == 18.0 and loaded.step == 7
    assert loaded.model.cfg == TINY
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch)["total"], model(batch)["total"])


def test_params_build_the_pldm_config_with_the_papers_coefficients():
    params = load_params(overrides=["model.name=pldm"])
    cfg = params.model.settings
    assert params.model.name == "pldm" and isinstance(cfg, Config)
    assert (cfg.alpha, cfg.beta, cfg.gamma, cfg.zeta, cfg.nu, cfg.mu) == (18.0, 12.0, 0.2, 0.7, 0.0, 0.0)
    assert load_params().model.name == "lewm"  # LeWM stays the default


@pytest.mark.parametrize("profile", ["cpu", "smoke", "paper"])
def test_pldm_and_lewm_share_the_architecture_in_every_profile(profile: str):
    raw = load_params(overrides=[f"profile={profile}"]).raw["model"]
    lewm = load_params(overrides=[f"profile={profile}"]).model.settings
    pldm = load_params(overrides=[f"profile={profile}", "model.name=pldm"]).model.settings
    for field in dataclasses.fields(Architecture):
        assert getattr(pldm, field.name) == getattr(lewm, field.name), (profile, field.name)
    assert set(raw["pldm"]) - {f.name for f in dataclasses.fields(Architecture)} == {
        "idm_hidden", "alpha", "beta", "gamma", "zeta", "nu", "mu"}


@pytest.mark.parametrize("key", ["alpha", "beta", "gamma", "zeta", "nu", "mu"])
def test_a_negative_coefficient_fails_naming_the_key(key: str):
    with pytest.raises(ConfigError, match=rf"model\.pldm\.{key}: .*≥ 0"):
        load_params(overrides=[f"model.pldm.{key}=-0.1", "model.name=pldm"])
    # checked while LeWM is the chosen model too: every model's section is validated
    with pytest.raises(ConfigError, match=rf"model\.pldm\.{key}"):
        load_params(overrides=[f"model.pldm.{key}=-1"])


def test_unknown_or_mistyped_pldm_keys_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.pldm\.alhpa"):
        load_params(overrides=["model.pldm.alhpa=1.0"])
    with pytest.raises(ConfigError, match=r"model\.pldm\.mu"):
        load_params(overrides=["model.pldm.mu=much"])


# ---------------------------------------------------------------------------- through the training loop


def test_training_stage_trains_and_logs_every_term(tiny_pusht: Path, tmp_path: Path):
    overrides = [*TINY_OVERRIDES, "train.batch_size=8", "train.val_batches=1", "train.max_steps=4",
                            "train.log_every=2", "train.val_every=4", "train.checkpoint_every=4"]
    outcome = train(load_params(overrides=overrides), "pusht", tiny_pusht, tmp_path, progress=False)
    assert outcome.step == 4
    for term in (*TERMS, "total"):
        for split in ("train", "val"):
            assert math.isfinite(outcome.metrics[f"{split}_{term}_loss"]), (split, term)
    assert "val_sigreg_loss" not in outcome.metrics
    assert (tmp_path / "curves.png").is_file()
    loaded = load_model(outcome.checkpoint)
    assert isinstance(loaded.model, PLDM) and loaded.meta.model == "pldm"
