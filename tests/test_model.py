"""LeWM model and loss: shapes, causality, AdaLN-zero init, rollout semantics, gradient paths, the
paper's parameter counts (reference §2, §4, §8.1), and LeWM as a `WorldModel` (lewm/models/)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lewm.config import ConfigError, load_params
from lewm.models import WorldModel, goal_distance_cost
from lewm.models.lewm import Config, LeWM, Model

PAPER: Config = load_params(overrides=["profile=paper"]).model.settings
"""The paper's architecture (reference §2.4), as params.yaml's `paper` profile sets it."""


def lewm_config(**changes: Any) -> Config:
    """The paper's settings with `changes` (the old ModelConfig defaults were the paper's widths)."""
    return dataclasses.replace(PAPER, **changes)


TINY = lewm_config(
    encoder="vit",
    patch_size=8,
    encoder_dim=32,
    encoder_depth=1,
    encoder_heads=2,
    embed_dim=32,
    projector_hidden=64,
    predictor_depth=2,
    predictor_heads=2,
    predictor_head_dim=16,
    predictor_mlp_dim=64,
    predictor_dropout=0.1,
    action_smoothed_dim=10,
)
IMAGE, ACTION_DIM, FRAMESKIP, HISTORY = 32, 2, 5, 3
BLOCK = ACTION_DIM * FRAMESKIP


def _model(cfg: Config = TINY, activate_conditioning: bool = False) -> LeWM:
    """A tiny LeWM; `activate_conditioning` randomises the zero-initialised AdaLN modulation so that
    attention and actions actually influence the predictions (at init every block is the identity)."""
    torch.manual_seed(0)
    model = LeWM(cfg, IMAGE, ACTION_DIM, FRAMESKIP, HISTORY)
    if activate_conditioning:
        with torch.no_grad():
            for block in model.predictor.blocks:
                block.modulation[1].weight.normal_(0, 0.2)
                block.modulation[1].bias.normal_(0, 0.2)
    return model


def _batch(batch: int = 4, frames: int = HISTORY + 1, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixels": torch.randint(
            0, 256, (batch, frames, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator
        ),
        "actions": torch.randn(batch, frames, BLOCK, generator=generator),
    }


def test_shapes_of_encode_predict_and_rollout() -> None:
    model = _model().eval()
    batch = _batch()
    z = model.encode(batch["pixels"])
    assert z.shape == (4, HISTORY + 1, TINY.embed_dim)
    assert model.encode(batch["pixels"][:, 0]).shape == (4, TINY.embed_dim)
    assert model.predict(z[:, :HISTORY], batch["actions"][:, :HISTORY]).shape == (4, HISTORY, TINY.embed_dim)
    assert model.predict(z[:, :1], batch["actions"][:, :1]).shape == (4, 1, TINY.embed_dim)
    assert model.rollout(z[:, 0], torch.randn(4, 5, BLOCK)).shape == (4, 5, TINY.embed_dim)


def test_encode_and_predict_reject_bad_inputs() -> None:
    model = _model()
    with pytest.raises(ValueError, match="uint8"):
        model.encode(torch.zeros(2, 3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match="pixels"):
        model.encode(torch.zeros(2, 3, IMAGE + 8, IMAGE + 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="T ≤ 3"):
        model.predict(torch.zeros(2, HISTORY + 1, TINY.embed_dim), torch.zeros(2, HISTORY + 1, BLOCK))
    with pytest.raises(ValueError, match="unknown encoder"):
        LeWM(lewm_config(encoder="mlp"), IMAGE, ACTION_DIM, FRAMESKIP, HISTORY)


def test_pixels_are_normalised_inside_encode() -> None:
    model = _model().eval()
    pixels = _batch()["pixels"][:, 0]
    images = (pixels.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(model.encode(pixels), model.projector(model.encoder(images)))


def test_predictions_are_causal() -> None:
    model = _model(activate_conditioning=True).eval()
    batch = _batch()
    z = model.encode(batch["pixels"])[:, :HISTORY]
    actions = batch["actions"][:, :HISTORY]
    pred = model.predict(z, actions)

    # Perturb frames along a random direction: a constant shift of every dimension is removed by the
    # LayerNorms in front of attention and at the output, and would test float rounding only.
    shift = torch.randn(z.shape[-1], generator=torch.Generator().manual_seed(5))
    later_frame = z.clone()
    later_frame[:, 2] += shift
    later_action = actions.clone()
    later_action[:, 2] += 1.0
    for changed in (model.predict(later_frame, actions), model.predict(z, later_action)):
        torch.testing.assert_close(changed[:, :2], pred[:, :2])
        assert not torch.allclose(changed[:, 2], pred[:, 2])

    earlier_frame = z.clone()
    earlier_frame[:, 0] += shift
    assert not torch.allclose(model.predict(earlier_frame, actions)[:, 2], pred[:, 2])  # attention is active


def test_adaln_zero_blocks_are_the_identity_at_init() -> None:
    model = _model()
    x, cond = torch.randn(4, HISTORY, TINY.embed_dim), torch.randn(4, HISTORY, TINY.embed_dim)
    for block in model.predictor.blocks:
        torch.testing.assert_close(block(x, block.modulation(cond)), x, rtol=0, atol=0)


@pytest.mark.parametrize("num_context", [1, 2, 3])
def test_rollout_equals_step_by_step_predict_with_history_truncation(num_context: int) -> None:
    """The rollout's cached keys and values (while the window has not slid) and last-token-only final
    block give what predicting every window whole does."""
    model = _model(activate_conditioning=True).eval()
    generator = torch.Generator().manual_seed(1)
    z_context = torch.randn(5, num_context, TINY.embed_dim, generator=generator)
    context_actions = torch.randn(5, num_context - 1, BLOCK, generator=generator)
    plan = torch.randn(5, 5, BLOCK, generator=generator)

    rolled = model.rollout(z_context, plan, context_actions if num_context > 1 else None)

    sequence, actions = z_context, torch.cat([context_actions, plan], dim=1)
    expected = []
    for step in range(5):
        end = num_context + step
        start = max(0, end - HISTORY)  # from 1 context frame the calls see 1, 2, 3, 3, 3 tokens
        next_z = model.predict(sequence[:, start:end], actions[:, start:end])[:, -1:]
        sequence = torch.cat([sequence, next_z], dim=1)
        expected.append(next_z)
    torch.testing.assert_close(rolled, torch.cat(expected, dim=1))


def test_rollout_broadcasts_one_context_over_candidates() -> None:
    model = _model(activate_conditioning=True).eval()
    z0 = torch.randn(1, TINY.embed_dim)
    plans = torch.randn(3, 5, BLOCK)
    rolled = model.rollout(z0, plans)
    for i in range(3):
        torch.testing.assert_close(rolled[i : i + 1], model.rollout(z0, plans[i : i + 1]))
    with pytest.raises(ValueError, match="context_actions"):
        model.rollout(torch.randn(3, 2, TINY.embed_dim), plans)


def test_resnet_encoder_option() -> None:
    model = _model(lewm_config(encoder="resnet", embed_dim=32, projector_hidden=64, predictor_depth=1)).eval()
    assert model.encoder.feature_dim == 512
    assert model.encode(_batch(batch=2)["pixels"]).shape == (2, HISTORY + 1, 32)


def test_loss_reaches_the_encoder_through_context_and_target() -> None:
    model = _model(dataclasses.replace(TINY, lambda_=0.1, sigreg_projections=32)).train()
    projected: dict[str, torch.Tensor] = {}

    def keep_projector_output(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        projected["z"] = output

    model.projector.register_forward_hook(keep_projector_output)
    out = model(_batch())
    assert set(out) == {"total", "pred", "sigreg", "embeddings"}
    torch.testing.assert_close(out["total"], out["pred"] + 0.1 * out["sigreg"])
    assert not out["embeddings"].requires_grad

    out["pred"].backward(retain_graph=True)
    grad = projected["z"].grad.reshape(4, HISTORY + 1, -1)
    assert grad[:, 0].abs().sum() > 0  # frame 0 is only context
    assert grad[:, HISTORY].abs().sum() > 0  # the last frame is only a target

    model.zero_grad()
    out["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())
    assert model.encoder.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_prediction_loss_is_elementwise_mse() -> None:
    """The `pred` term of the model's loss is the element-wise MSE between the teacher-forced predictions
    and the embeddings `num_preds` frames later (target not detached)."""
    model = _model(activate_conditioning=True).eval()
    batch = _batch(frames=HISTORY + 2)  # num_preds = 2
    out = model(batch)
    z = model.encode(batch["pixels"])
    pred = model.predict(z[:, :HISTORY], batch["actions"][:, :HISTORY])
    torch.testing.assert_close(out["pred"], F.mse_loss(pred, z[:, 2:]))
    assert out["pred"].requires_grad


def test_paper_config_parameter_counts() -> None:
    """Reference §2.4. timm's VisionTransformer with global_pool="token" and num_classes=0 has exactly the
    HF ViTModel's parameters without its pooler (patch embed 113,088 + CLS 192 + positions 257×192 +
    12 × 444,864 + final LayerNorm 384), so every count matches the reference."""
    counts = LeWM(PAPER, image_size=224, action_dim=2, frameskip=5, history=3).num_parameters()
    assert counts == {
        "encoder": 5_501_376,
        "projector": 792_768,
        "predictor": 10_791_360,
        "pred_proj": 792_768,
        "action_encoder": 156_206,
        "total": 18_034_478,
    }


# ------------------------------------------------------------------------------------ LeWM as a WorldModel


def test_lewm_provides_the_world_model_interface() -> None:
    model: WorldModel = _model()
    assert Model is LeWM
    assert (model.image_size, model.action_dim, model.frameskip, model.history) == (
        IMAGE, ACTION_DIM, FRAMESKIP, HISTORY)
    for method in ("encode", "predict", "rollout", "planning_cost", "num_parameters"):
        assert callable(getattr(model, method)), method
    assert set(model(_batch())) == {"pred", "sigreg", "total", "embeddings"}


def test_planning_cost_returns_one_cost_per_candidate() -> None:
    model = _model(activate_conditioning=True).eval()
    generator = torch.Generator().manual_seed(2)
    z_context, z_goal = torch.randn(1, TINY.embed_dim, generator=generator), torch.randn(TINY.embed_dim)
    candidates = torch.randn(6, 4, BLOCK, generator=generator)
    costs = model.planning_cost(z_context, z_goal)(candidates)
    with torch.no_grad():
        expected = ((model.rollout(z_context, candidates)[:, -1] - z_goal) ** 2).sum(dim=1)
    assert costs.shape == (6,)
    torch.testing.assert_close(costs, expected, atol=1e-5, rtol=1e-5)
    # the goal may carry a batch axis, and LeWM's cost is the shared goal-distance cost
    torch.testing.assert_close(model.planning_cost(z_context, z_goal[None])(candidates), costs)
    torch.testing.assert_close(goal_distance_cost(model, z_context, z_goal)(candidates), costs)
    assert (costs > 0).all() and costs.unique().numel() == 6  # candidates are told apart


def test_objective_settings_come_from_the_model_section_of_params() -> None:
    params = load_params(overrides=["model.lewm.lambda=0.25", "model.lewm.sigreg_projections=16"])
    assert params.model.name == "lewm" and isinstance(params.model.settings, Config)
    settings = dataclasses.replace(params.model.settings, **{
        f.name: getattr(TINY, f.name) for f in dataclasses.fields(Config)
        if f.name not in ("lambda_", "sigreg_projections")})
    assert (settings.lambda_, settings.sigreg_projections) == (0.25, 16)
    model = _model(settings)
    assert model.sigreg.num_projections == 16
    out = model(_batch())
    torch.testing.assert_close(out["total"], out["pred"] + 0.25 * out["sigreg"])


@pytest.mark.parametrize(("override", "key"), [
    ("model.name=nope", "model.name"),
    ("model.lewm.lamda=0.1", "model.lewm.lamda"),
    ("model.lewm.encoder_depth=two", "model.lewm.encoder_depth"),
])
def test_bad_model_parameters_fail_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(overrides=[override])
