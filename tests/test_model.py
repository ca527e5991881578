"""LeWM model and loss: shapes, causality, AdaLN-zero init, rollout semantics, gradient paths and the
paper's parameter counts (reference §2, §4, §8.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lewm.config import ModelConfig
from lewm.losses import lewm_loss, prediction_loss
from lewm.model import LeWM
from lewm.sigreg import SIGReg

TINY = ModelConfig(
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
)
IMAGE, ACTION_DIM, FRAMESKIP, HISTORY = 32, 2, 5, 3
BLOCK = ACTION_DIM * FRAMESKIP


def _model(cfg: ModelConfig = TINY, activate_conditioning: bool = False) -> LeWM:
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
        LeWM(ModelConfig(encoder="mlp"), IMAGE, ACTION_DIM, FRAMESKIP, HISTORY)


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

    later_frame = z.clone()
    later_frame[:, 2] += 1.0
    later_action = actions.clone()
    later_action[:, 2] += 1.0
    for changed in (model.predict(later_frame, actions), model.predict(z, later_action)):
        torch.testing.assert_close(changed[:, :2], pred[:, :2])
        assert not torch.allclose(changed[:, 2], pred[:, 2])

    earlier_frame = z.clone()
    earlier_frame[:, 0] += 1.0
    assert not torch.allclose(model.predict(earlier_frame, actions)[:, 2], pred[:, 2])  # attention is active


def test_adaln_zero_blocks_are_the_identity_at_init() -> None:
    model = _model()
    x, cond = torch.randn(4, HISTORY, TINY.embed_dim), torch.randn(4, HISTORY, TINY.embed_dim)
    for block in model.predictor.blocks:
        torch.testing.assert_close(block(x, cond), x, rtol=0, atol=0)


def test_rollout_equals_step_by_step_predict_with_history_truncation() -> None:
    model = _model(activate_conditioning=True).eval()
    generator = torch.Generator().manual_seed(1)
    z_context = torch.randn(5, 2, TINY.embed_dim, generator=generator)
    context_actions = torch.randn(5, 1, BLOCK, generator=generator)
    plan = torch.randn(5, 4, BLOCK, generator=generator)

    rolled = model.rollout(z_context, plan, context_actions)

    sequence, actions = z_context, torch.cat([context_actions, plan], dim=1)
    expected = []
    for step in range(4):
        end = 2 + step
        start = max(0, end - HISTORY)  # calls see 2, 3, 3, 3 tokens
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
    model = _model(ModelConfig(encoder="resnet", embed_dim=32, projector_hidden=64, predictor_depth=1)).eval()
    assert model.encoder.feature_dim == 512
    assert model.encode(_batch(batch=2)["pixels"]).shape == (2, HISTORY + 1, 32)


def test_loss_reaches_the_encoder_through_context_and_target() -> None:
    model = _model().train()
    projected: dict[str, torch.Tensor] = {}

    def keep_projector_output(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        projected["z"] = output

    model.projector.register_forward_hook(keep_projector_output)
    out = lewm_loss(model, _batch(), SIGReg(num_projections=32), lambda_=0.1)
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
    pred, target = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    torch.testing.assert_close(prediction_loss(pred, target), F.mse_loss(pred, target))


def test_paper_config_parameter_counts() -> None:
    """Reference §2.4. timm's VisionTransformer with global_pool="token" and num_classes=0 has exactly the
    HF ViTModel's parameters without its pooler (patch embed 113,088 + CLS 192 + positions 257×192 +
    12 × 444,864 + final LayerNorm 384), so every count matches the reference."""
    paper = ModelConfig(patch_size=14, encoder_depth=12)
    counts = LeWM(paper, image_size=224, action_dim=2, frameskip=5, history=3).num_parameters()
    assert counts == {
        "encoder": 5_501_376,
        "projector": 792_768,
        "predictor": 10_791_360,
        "pred_proj": 792_768,
        "action_encoder": 156_206,
        "total": 18_034_478,
    }
