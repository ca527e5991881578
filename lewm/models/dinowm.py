"""A DINO-WM-style baseline (reference §12): a FROZEN pretrained ViT that keeps its patch tokens, and a
causal ViT predictor over those tokens trained with L = mean ‖ẑ_{t+1} − z_{t+1}‖² against detached targets.

DINO-WM freezes DINOv2 (ViT-S/14, 256 × 384 patch tokens at 224 px). Its weights cannot be downloaded here,
so the frozen encoder is the ViT of a trained LeWM checkpoint (`encoder_checkpoint`, by default the world's
`runs/{env}/train/model.pt`): its patch tokens after the final LayerNorm, the [CLS] token dropped, no
projector. Results with it are labelled "DINO-WM-style (frozen LeWM ViT patches)".

- `bind(config, env)` (the optional `WorldModel` hook, lewm/models/__init__.py) reads that checkpoint when a
  run starts and records its path, SHA-256, world, image size and `model.lewm` settings in `encoder`: a
  dinowm checkpoint then rebuilds its encoder without the LeWM file (the weights are in its state dict),
  and the run fingerprint changes when LeWM is retrained.
- `DINOWM.load_pretrained()` copies the LeWM encoder's weights in; training calls it on a fresh model.
- The latent of a frame is its patch tokens (N, D); planning uses the shared `goal_distance_cost`, the
  squared distance over all patch tokens of the last imagined frame to the goal's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lewm.config import ConfigError, build_section
from lewm.io import file_sha256
from lewm.models import CostFn, goal_distance_cost
from lewm.models import lewm as lewm_model
from lewm.models.lewm import CausalSelfAttention, Encoder, FeedForward, normalised_images


@dataclass(frozen=True)
class Config:
    """`model.dinowm`: the source of the frozen encoder and DINO-WM's predictor (depth, heads, mlp, head
    dim, dropout; width `predictor_dim`) with its action embedding (SWM: 10-d)."""

    encoder_checkpoint: str  # the LeWM checkpoint whose ViT is frozen; `{env}` stands for the run's world
    encoder: dict[str, Any]  # what `bind` read from encoder_checkpoint ({} in params.yaml)
    action_emb_dim: int
    predictor_dim: int
    predictor_depth: int
    predictor_heads: int
    predictor_head_dim: int
    predictor_mlp_dim: int
    predictor_dropout: float


def source_checkpoint(path: Path, env: str) -> dict[str, Any]:
    """The LeWM checkpoint at `path` (`lewm.checkpoint.read_checkpoint`'s dict), checked to hold a ViT
    encoder, whose patch tokens are the latents; `env` names the stage that makes it."""
    from lewm.checkpoint import check_code, read_checkpoint  # at call time: it sits above the models

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no LeWM checkpoint for model.dinowm's frozen encoder (encoder_checkpoint); "
            f"train LeWM first with `dvc repro train@{env}`"
        )
    state = read_checkpoint(path)
    check_code(state, path)
    meta = state["meta"]
    if meta.model != "lewm":
        raise ValueError(f"{path}: a {meta.model!r} checkpoint; model.dinowm.encoder_checkpoint needs a "
                         f"LeWM one (model.name: lewm) whose ViT it freezes")
    if meta.settings["encoder"] != "vit":
        raise ValueError(f"{path}: LeWM with a {meta.settings['encoder']!r} encoder has no patch tokens; "
                         f"model.dinowm needs a ViT encoder (model.lewm.encoder: vit)")
    return state


def bind(config: Config, env: str) -> Config:
    """`config` for a run on `env`, `encoder` filled from the LeWM checkpoint `encoder_checkpoint` names."""
    if config.encoder:
        raise ConfigError("model.dinowm.encoder: filled in from encoder_checkpoint when a run starts; "
                          "leave it {} in params.yaml")
    path = Path(config.encoder_checkpoint.format(env=env))
    meta = source_checkpoint(path, env)["meta"]
    return dataclasses.replace(config, encoder={
        "checkpoint": str(path), "sha256": file_sha256(path), "env": meta.env,
        "image_size": meta.image_size, "settings": meta.settings,
    })


class PredictorBlock(nn.Module):
    """Pre-norm transformer block (LeWM's attention and feed-forward) with an attention mask."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(dim, heads, head_dim, dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(x, mask)
        return x + self.mlp(x)


class PatchPredictor(nn.Module):
    """DINO-WM's ViT predictor: (B, T, N, D) patch tokens and (B, T, E) action embeddings → (B, T, N, D).

    Each patch token gets its frame's action embedding concatenated on the feature axis (DINO-WM's
    conditioning, kept so the baseline is DINO-WM's and not LeWM's AdaLN), is projected to the predictor
    width and gets a learned spatial (patch) plus temporal (frame) position. Attention is frame-causal: a
    token sees every patch of its own and earlier frames, so output (t, n) predicts patch n of frame t + 1.
    """

    def __init__(self, cfg: Config, num_patches: int, latent_dim: int, history: int) -> None:
        super().__init__()
        dim = cfg.predictor_dim
        self.project_in = nn.Linear(latent_dim + cfg.action_emb_dim, dim)
        self.spatial_positions = nn.Parameter(torch.randn(1, 1, num_patches, dim))
        self.temporal_positions = nn.Parameter(torch.randn(1, history, 1, dim))
        self.blocks = nn.ModuleList(
            PredictorBlock(dim, cfg.predictor_heads, cfg.predictor_head_dim, cfg.predictor_mlp_dim,
                           cfg.predictor_dropout)
            for _ in range(cfg.predictor_depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.project_out = nn.Linear(dim, latent_dim)

    def forward(self, z: Tensor, action_emb: Tensor) -> Tensor:
        frames, patches = z.shape[1:3]
        actions = action_emb[:, :, None].expand(-1, -1, patches, -1)
        x = self.project_in(torch.cat([z, actions], dim=-1))
        x = (x + self.spatial_positions + self.temporal_positions[:, :frames]).flatten(1, 2)
        frame = torch.arange(frames, device=z.device).repeat_interleave(patches)
        mask = frame[:, None] >= frame[None, :]  # (T·N, T·N): query frame ≥ key frame
        for block in self.blocks:
            x = block(x, mask)
        return self.project_out(self.norm(x)).reshape(z.shape)


class DINOWM(nn.Module):
    """Frozen patch encoder + action embedding + patch predictor (the `WorldModel` protocol). The encoder
    stays in eval mode with `requires_grad` off whatever `train()` is called with, and encodes under
    `no_grad`, so no gradient ever reaches it; pixels are ImageNet-normalised as for LeWM."""

    def __init__(
        self, cfg: Config, image_size: int, action_dim: int, frameskip: int, history: int
    ) -> None:
        super().__init__()
        if history < 1:
            raise ValueError(f"history must be ≥ 1, got {history}")
        if not cfg.encoder:
            raise ValueError("model.dinowm: `encoder` is empty; settings are bound to a LeWM checkpoint "
                             "(lewm.checkpoint.model_meta) before a model is built")
        source = cfg.encoder
        if source["image_size"] != image_size:
            raise ValueError(f"{source['checkpoint']}: its encoder saw {source['image_size']}-px frames, the "
                             f"data has {image_size}-px ones")
        self.cfg, self.image_size, self.history = cfg, image_size, history
        self.action_dim, self.frameskip = action_dim, frameskip
        encoder_cfg = build_section(lewm_model.Config, source["settings"], f"{source['checkpoint']}: lewm")
        self.encoder = Encoder(encoder_cfg, image_size).requires_grad_(False).eval()
        self.latent_shape = (self.encoder.backbone.patch_embed.num_patches, self.encoder.feature_dim)
        self.action_encoder = nn.Linear(frameskip * action_dim, cfg.action_emb_dim)  # SWM's kernel-1 Conv1d
        self.predictor = PatchPredictor(cfg, *self.latent_shape, history)

    def train(self, mode: bool = True) -> DINOWM:
        """Set the mode of the trained parts; the frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def load_pretrained(self) -> None:
        """Copy the source LeWM checkpoint's encoder weights into the frozen encoder (training calls this on
        a fresh model; a dinowm checkpoint holds them itself). The file must be the one `bind` hashed."""
        source = self.cfg.encoder
        path = Path(source["checkpoint"])
        state = source_checkpoint(path, source["env"])
        if file_sha256(path) != source["sha256"]:
            raise ValueError(f"{path}: changed since the run's settings were bound to it; start it again")
        prefix = "encoder."
        weights = {k.removeprefix(prefix): v for k, v in state["model"].items() if k.startswith(prefix)}
        self.encoder.load_state_dict(weights)

    def encode(self, pixels: Tensor) -> Tensor:
        """uint8 (B, [T,] 3, H, W) → patch tokens (B, [T,] N, D) after the ViT's final LayerNorm."""
        images = normalised_images(pixels, self.image_size)
        backbone = self.encoder.backbone
        with torch.no_grad():
            tokens = backbone.forward_features(images)[:, backbone.num_prefix_tokens :]
        return tokens.reshape(*pixels.shape[:-3], *self.latent_shape)

    def predict(self, z: Tensor, action_blocks: Tensor) -> Tensor:
        """Teacher-forced next patch tokens: (B, T ≤ history, N, D) and (B, T, frameskip·A) →
        (B, T, N, D), output t being the prediction of frame t + 1."""
        if (z.dim() != 4 or z.shape[1] > self.history or tuple(z.shape[2:]) != self.latent_shape
                or action_blocks.shape[:2] != z.shape[:2]):
            raise ValueError(
                f"predict needs z (B, T ≤ {self.history}, {', '.join(map(str, self.latent_shape))}) and "
                f"action blocks (B, T, ·), got {tuple(z.shape)} and {tuple(action_blocks.shape)}"
            )
        return self.predictor(z, self.action_encoder(action_blocks))

    def rollout(
        self, z_context: Tensor, action_blocks: Tensor, context_actions: Tensor | None = None
    ) -> Tensor:
        """Autoregressive imagination (as DINO-WM plans): z_context (B or 1, [C,] N, D), action_blocks
        (B, H, frameskip·A) from the last observed frame on, context_actions (·, C−1, frameskip·A) after
        the earlier context frames (only when C > 1). Each step predicts from the last `history` frames
        (observed, then imagined) and appends the last output frame; returns the H frames (B, H, N, D)."""
        if z_context.dim() == 3:
            z_context = z_context.unsqueeze(1)
        batch, horizon = action_blocks.shape[:2]
        num_context = z_context.shape[1]
        if num_context > 1:
            if context_actions is None or context_actions.shape[1] != num_context - 1:
                raise ValueError(
                    f"rollout with {num_context} context frames needs {num_context - 1} context_actions"
                )
            action_blocks = torch.cat([context_actions.expand(batch, -1, -1), action_blocks], dim=1)
        sequence = z_context.expand(batch, -1, -1, -1)
        for end in range(num_context, num_context + horizon):
            start = max(0, end - self.history)
            predicted = self.predict(sequence[:, start:end], action_blocks[:, start:end])[:, -1:]
            sequence = torch.cat([sequence, predicted], dim=1)
        return sequence[:, num_context:]

    def planning_cost(self, z_context: Tensor, z_goal: Tensor, context_actions: Tensor | None = None,
                      steps: str = "last") -> CostFn:
        """Squared distance over all patch tokens of the imagined frames `steps` names to the goal's."""
        return goal_distance_cost(self, z_context, z_goal, context_actions, steps)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss of a batch of clips (`pixels` uint8 (B, T, 3, H, W), `actions` (B, T, frameskip·A)): the
        first `history` frames are the context, output t is compared with the patch tokens `T − history`
        frames later (element-wise MSE, target detached). Returns `pred`, `total` and `embeddings`."""
        embeddings = self.encode(batch["pixels"])
        num_preds = embeddings.shape[1] - self.history
        if num_preds < 1:
            raise ValueError(
                f"clips need more than history = {self.history} frames, got {embeddings.shape[1]}"
            )
        pred = self.predict(embeddings[:, : self.history], batch["actions"][:, : self.history])
        pred_loss = (pred - embeddings[:, num_preds:].detach()).pow(2).mean()
        return {"pred": pred_loss, "total": pred_loss, "embeddings": embeddings.detach()}

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part (the frozen encoder as `encoder_frozen`) and in total."""
        parts = {"encoder_frozen": self.encoder, "action_encoder": self.action_encoder,
                 "predictor": self.predictor}
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
        counts["total"] = sum(counts.values())
        return counts


Model = DINOWM
"""The class `model.name: dinowm` builds (lewm/checkpoint.py)."""
