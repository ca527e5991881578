"""The DINO-WM-style baseline (lewm/models/dinowm.py): a frozen LeWM ViT's patch tokens and a frame-causal
patch predictor; shapes, the frozen encoder, causality, the detached target, binding to the source
checkpoint (checkpoints, fingerprints, errors) and a short run through the training loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lewm.checkpoint import ModelMeta, load_model, model_meta, save_checkpoint
from lewm.config import ConfigError, load_params
from lewm.data.clips import ActionStats
from lewm.models import goal_distance_cost
from lewm.models import lewm as lewm_model
from lewm.models.dinowm import DINOWM, Config, Model, bind
from lewm.models.lewm import normalised_images
from lewm.train import run_fingerprint, train

IMAGE, ACTION_DIM, FRAMESKIP, HISTORY = 32, 2, 5, 3
BLOCK = ACTION_DIM * FRAMESKIP
PATCHES, DIM = 16, 32  # 32-px frames in 8-px patches; the tiny LeWM's ViT width
STATS = ActionStats.from_dict({"mean": [0.0, 0.0], "std": [1.0, 1.0]})
TEMPLATE = "runs/{env}/train/model.pt"

LEWM = dataclasses.replace(
    load_params().model.settings, encoder="vit", patch_size=8, encoder_dim=DIM, encoder_depth=1,
    encoder_heads=2, embed_dim=16, projector_hidden=32, predictor_depth=1, predictor_heads=2,
    predictor_head_dim=8, predictor_mlp_dim=32, sigreg_projections=16,
)
TINY_OVERRIDES = [
    "model.name=dinowm", "model.dinowm.action_emb_dim=4", "model.dinowm.predictor_dim=16",
    "model.dinowm.predictor_depth=2", "model.dinowm.predictor_heads=2", "model.dinowm.predictor_head_dim=8",
    "model.dinowm.predictor_mlp_dim=32",
]


def save_lewm(path: Path, cfg: lewm_model.Config = LEWM, seed: int = 0) -> Path:
    """A tiny randomly initialised LeWM checkpoint at `path` (the frozen encoder's source)."""
    torch.manual_seed(seed)
    meta = model_meta("pusht", "lewm", cfg, IMAGE, ACTION_DIM, FRAMESKIP, HISTORY, STATS)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": meta.build().state_dict(), "meta": meta, "step": 0})
    return path


def tiny_config(root: Path) -> Config:
    """The tiny predictor, its encoder checkpoint template under `root`."""
    settings = load_params(overrides=TINY_OVERRIDES).model.settings
    return dataclasses.replace(settings, encoder_checkpoint=str(root / TEMPLATE))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The LeWM checkpoint of world `pusht` under tmp_path."""
    return save_lewm(tmp_path / TEMPLATE.format(env="pusht"))


@pytest.fixture
def meta(source: Path, tmp_path: Path) -> ModelMeta:
    return model_meta("pusht", "dinowm", tiny_config(tmp_path), IMAGE, ACTION_DIM, FRAMESKIP, HISTORY, STATS)


def built(meta: ModelMeta, seed: int = 0) -> DINOWM:
    """A model of `meta` with the source's encoder weights."""
    torch.manual_seed(seed)
    model = meta.build()
    model.load_pretrained()
    return model


def batch(size: int = 4, frames: int = HISTORY + 1, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randint(0, 256, (size, frames, 3, IMAGE, IMAGE), dtype=torch.uint8,
                                    generator=generator),
            "actions": torch.randn(size, frames, BLOCK, generator=generator)}


def test_shapes_of_encode_predict_rollout_and_cost(meta: ModelMeta) -> None:
    model = built(meta).eval()
    assert Model is DINOWM
    z = model.encode(batch()["pixels"])
    assert z.shape == (4, HISTORY + 1, PATCHES, DIM)
    assert model.encode(batch()["pixels"][:, 0]).shape == (4, PATCHES, DIM)
    actions = batch()["actions"]
    assert model.predict(z[:, :HISTORY], actions[:, :HISTORY]).shape == (4, HISTORY, PATCHES, DIM)
    assert model.predict(z[:, :1], actions[:, :1]).shape == (4, 1, PATCHES, DIM)
    assert model.rollout(z[:1, 0], torch.randn(6, 5, BLOCK)).shape == (6, 5, PATCHES, DIM)
    assert model.rollout(z[:, :2], torch.randn(4, 5, BLOCK), actions[:, :1]).shape == (4, 5, PATCHES, DIM)
    with pytest.raises(ValueError, match="context_actions"):
        model.rollout(z[:, :2], torch.randn(4, 5, BLOCK))
    with pytest.raises(ValueError, match="predict needs"):
        model.predict(z, actions)  # T = 4 > history

    candidates = torch.randn(6, 4, BLOCK)
    costs = model.planning_cost(z[:1, 0], z[0, 1])(candidates)
    with torch.no_grad():
        expected = (model.rollout(z[:1, 0], candidates)[:, -1] - z[0, 1]).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(costs, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(goal_distance_cost(model, z[:1, 0], z[0, 1])(candidates), costs)


def test_latents_are_the_source_vits_patch_tokens(meta: ModelMeta, source: Path) -> None:
    """The frozen encoder is LeWM's ViT with its weights: its tokens after the final LayerNorm without
    the [CLS] token (which is what LeWM's encoder returns)."""
    model, lewm = built(meta).eval(), load_model(source).model
    pixels = batch()["pixels"][:, 0]
    features = lewm.encoder.backbone.forward_features(normalised_images(pixels, IMAGE))
    torch.testing.assert_close(model.encode(pixels), features[:, 1:])
    torch.testing.assert_close(lewm.encoder(normalised_images(pixels, IMAGE)), features[:, 0])
    counts = model.num_parameters()
    assert counts["encoder_frozen"] == sum(p.numel() for p in lewm.encoder.parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_the_encoder_stays_frozen_through_a_training_step(meta: ModelMeta) -> None:
    model = built(meta).train()
    assert not model.encoder.training and model.predictor.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    predictor_before = {k: v.clone() for k, v in model.predictor.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # as lewm/train.py: all
    out = model(batch())
    assert set(out) == {"pred", "total", "embeddings"} and out["total"] is out["pred"]
    out["total"].backward()
    optimizer.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())
    assert not all(torch.equal(v, predictor_before[k]) for k, v in model.predictor.state_dict().items())
    model.eval().train()
    assert not model.encoder.training


def test_attention_is_frame_causal(meta: ModelMeta) -> None:
    """A patch token sees every patch of its own frame and of earlier frames, none of later frames."""
    model = built(meta).eval()
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(2, HISTORY, PATCHES, DIM, generator=generator)
    actions = torch.randn(2, HISTORY, BLOCK, generator=generator)
    pred = model.predict(z, actions)

    later_frame, later_action = z.clone(), actions.clone()
    later_frame[:, 2] += torch.randn(PATCHES, DIM, generator=generator)
    later_action[:, 2] += 1.0
    for changed in (model.predict(later_frame, actions), model.predict(z, later_action)):
        torch.testing.assert_close(changed[:, :2], pred[:, :2])
        assert not torch.allclose(changed[:, 2], pred[:, 2])

    earlier_frame = z.clone()
    earlier_frame[:, 0] += torch.randn(PATCHES, DIM, generator=generator)
    assert not torch.allclose(model.predict(earlier_frame, actions)[:, 2], pred[:, 2])
    one_patch = z.clone()
    one_patch[:, 1, 0] += torch.randn(DIM, generator=generator)  # patch 0 of frame 1, seen by its patch N−1
    assert not torch.allclose(model.predict(one_patch, actions)[:, 1, -1], pred[:, 1, -1])


def test_rollout_equals_step_by_step_predict_with_history_truncation(meta: ModelMeta) -> None:
    model = built(meta).eval()
    generator = torch.Generator().manual_seed(1)
    z_context = torch.randn(3, 2, PATCHES, DIM, generator=generator)
    context_actions = torch.randn(3, 1, BLOCK, generator=generator)
    plan = torch.randn(3, 4, BLOCK, generator=generator)
    sequence, actions = z_context, torch.cat([context_actions, plan], dim=1)
    for end in range(2, 6):
        start = max(0, end - HISTORY)
        next_z = model.predict(sequence[:, start:end], actions[:, start:end])[:, -1:]
        sequence = torch.cat([sequence, next_z], dim=1)
    torch.testing.assert_close(model.rollout(z_context, plan, context_actions), sequence[:, 2:])


def test_the_prediction_loss_is_mse_against_detached_targets(meta: ModelMeta) -> None:
    model = built(meta).eval()
    clips = batch(frames=HISTORY + 2)  # num_preds = 2: output t is compared with frame t + 2
    z = model.encode(clips["pixels"])
    out = model(clips)
    expected = F.mse_loss(model.predict(z[:, :HISTORY], clips["actions"][:, :HISTORY]), z[:, 2:])
    torch.testing.assert_close(out["pred"], expected)
    torch.testing.assert_close(out["embeddings"], z)

    # with latents that could carry gradients, only the context receives them, never the targets
    latents = z.clone().requires_grad_(True)
    model.encode = lambda pixels: latents
    model(clips)["total"].backward()
    assert latents.grad[:, :HISTORY].abs().sum() > 0
    assert latents.grad[:, HISTORY:].abs().sum() == 0


def test_a_checkpoint_loads_without_the_lewm_file(meta: ModelMeta, source: Path, tmp_path: Path) -> None:
    model = built(meta).eval()
    assert meta.settings["encoder"]["checkpoint"] == str(source)
    assert meta.settings["encoder"]["settings"]["encoder_dim"] == DIM
    save_checkpoint(tmp_path / "dinowm.pt", {"model": model.state_dict(), "meta": meta, "step": 7})
    source.unlink()

    loaded = load_model(tmp_path / "dinowm.pt")
    assert isinstance(loaded.model, DINOWM) and loaded.step == 7 and not loaded.model.encoder.training
    assert not any(p.requires_grad for p in loaded.model.encoder.parameters())
    pixels, plans = batch()["pixels"][:, 0], torch.randn(4, 3, BLOCK)
    torch.testing.assert_close(loaded.model.encode(pixels), model.encode(pixels))
    z0 = model.encode(pixels[:1])
    torch.testing.assert_close(loaded.model.rollout(z0, plans), model.rollout(z0, plans))
    with pytest.raises(FileNotFoundError, match=r"dvc repro train@pusht"):
        meta.build().load_pretrained()  # only training reads the source


def test_the_fingerprint_follows_the_encoder_checkpoint(source: Path, tmp_path: Path) -> None:
    params = load_params(overrides=[*TINY_OVERRIDES, f"model.dinowm.encoder_checkpoint={tmp_path / TEMPLATE}"
                                    ])
    first = run_fingerprint(params, "pusht", "data")
    assert run_fingerprint(params, "pusht", "data") == first
    save_lewm(source, seed=1)  # LeWM retrained
    assert run_fingerprint(params, "pusht", "data") != first
    lewm = load_params()
    assert run_fingerprint(lewm, "pusht", "data") == run_fingerprint(lewm, "pusht", "data")


def test_a_missing_encoder_checkpoint_names_the_path_and_the_command(tmp_path: Path) -> None:
    params = load_params(overrides=[*TINY_OVERRIDES, f"model.dinowm.encoder_checkpoint={tmp_path / TEMPLATE}"
                                    ])
    expected = rf"{tmp_path}/runs/reacher/train/model\.pt: .*`dvc repro train@reacher`"
    with pytest.raises(FileNotFoundError, match=expected):
        run_fingerprint(params, "reacher", "data")
    with pytest.raises(FileNotFoundError, match=expected):
        model_meta("reacher", "dinowm", params.model.settings, IMAGE, ACTION_DIM, FRAMESKIP, HISTORY, STATS)


def test_the_source_must_be_a_lewm_vit_checkpoint(tmp_path: Path) -> None:
    resnet = dataclasses.replace(LEWM, encoder="resnet", resnet_name="resnet18")
    save_lewm(tmp_path / TEMPLATE.format(env="pusht"), resnet)
    with pytest.raises(ValueError, match="no patch tokens"):
        bind(tiny_config(tmp_path), "pusht")
    other = ModelMeta("cube", "pldm", {}, IMAGE, ACTION_DIM, FRAMESKIP, HISTORY, STATS)
    save_checkpoint(tmp_path / TEMPLATE.format(env="cube"), {"model": {}, "meta": other, "step": 0})
    with pytest.raises(ValueError, match=r"a 'pldm' checkpoint; .* needs a LeWM one"):
        bind(tiny_config(tmp_path), "cube")


def test_the_source_must_match_the_data_image_size(source: Path, tmp_path: Path) -> None:
    meta = model_meta("pusht", "dinowm", tiny_config(tmp_path), 64, ACTION_DIM, FRAMESKIP, HISTORY, STATS)
    with pytest.raises(ValueError, match="32-px frames, the data has 64-px"):
        meta.build()


def test_params_hold_a_validated_dinowm_section() -> None:
    cpu = load_params().model
    assert cpu.name == "lewm"  # the default stays LeWM
    settings = load_params(overrides=["model.name=dinowm"]).model.settings
    assert isinstance(settings, Config) and settings.encoder == {}
    assert settings.encoder_checkpoint == TEMPLATE
    paper = load_params(overrides=["profile=paper", "model.name=dinowm"]).model.settings
    assert (paper.predictor_depth, paper.predictor_heads, paper.predictor_mlp_dim, paper.predictor_head_dim,
            paper.predictor_dropout) == (6, 16, 2048, 64, 0.1)
    with pytest.raises(ConfigError, match=r"model\.dinowm\.predictor_dpeth"):
        load_params(overrides=["model.dinowm.predictor_dpeth=2"])  # checked while lewm is chosen too
    with pytest.raises(ConfigError, match=r"model\.dinowm\.encoder: filled in"):
        bind(dataclasses.replace(settings, encoder={"image_size": 64}), "pusht")


def test_training_loads_the_frozen_encoder_and_logs_its_terms(tiny_pusht: Path, tmp_path: Path) -> None:
    source = save_lewm(tmp_path / TEMPLATE.format(env="pusht"))
    overrides = [*TINY_OVERRIDES, f"model.dinowm.encoder_checkpoint={tmp_path / TEMPLATE}",
                 "train.batch_size=8", "train.val_batches=1", "train.max_steps=2", "train.log_every=1"]
    outcome = train(load_params(overrides=overrides), "pusht", tiny_pusht, tmp_path / "run", progress=False)
    for split in ("train", "val"):
        assert {f"{split}_pred_loss", f"{split}_total_loss"} <= set(outcome.metrics)
    assert "val_sigreg_loss" not in outcome.metrics
    trained = load_model(outcome.checkpoint).model
    lewm = torch.load(source, weights_only=False)["model"]
    for key, value in trained.encoder.state_dict().items():
        assert torch.equal(value, lewm[f"encoder.{key}"]), key
