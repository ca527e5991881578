"""The LeWM world model (reference §2): pixels → encoder → BN projector → z; (z, action blocks) →
AdaLN-zero causal transformer → BN projector → next z; trained with L = L_pred + λ·SIGReg (§4).

- `Encoder`: a randomly initialised timm ViT ([CLS] token after the final LayerNorm) or ResNet (pooled).
- `MLP`: Linear → BatchNorm1d → GELU → Linear, used as the projector after the encoder and as `pred_proj`
  after the predictor; the BatchNorm lets SIGReg shape the embeddings despite the ViT's final LayerNorm.
- `ActionEncoder`: per-time-step embedding of an action block (frameskip raw actions stacked).
- `Predictor`: learned positions, DiT-style AdaLN-zero blocks conditioned per token on the action
  embedding, causal attention, final LayerNorm. Zero-initialised modulation makes every block the identity
  at init, so action conditioning enters training progressively.
- `JEPA`: these parts with `encode`, `predict` (teacher-forced, T ≤ history), `rollout` (autoregressive,
  for planning), `planning_cost` and the prediction loss; everything of the `WorldModel` protocol
  (lewm/models/__init__.py) but the objective. `Architecture` holds its settings.
- `LeWM` (`Model`): the JEPA with `forward(batch)`, the training loss. SIGReg is a submodule, so DDP sees
  one forward per step; it has no weights. PLDM (lewm/models/pldm.py) is the same JEPA, another objective.

The objective: a teacher-forced next-embedding MSE and the anti-collapse regulariser on the embeddings of
every frame. No stop-gradient, no EMA: the encoder gets gradients through the context, the targets and
SIGReg.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.models import CostFn, goal_distance_cost
from lewm.sigreg import SIGReg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """The architecture (reference §2; image and action sizes come from the dataset): the settings every
    JEPA world model built from these parts shares (LeWM's and PLDM's `Config`)."""

    encoder: str  # vit | resnet
    patch_size: int
    encoder_dim: int
    encoder_depth: int
    encoder_heads: int
    resnet_name: str
    embed_dim: int
    projector_hidden: int
    predictor_depth: int
    predictor_heads: int
    predictor_head_dim: int
    predictor_mlp_dim: int
    predictor_dropout: float
    action_smoothed_dim: int


@dataclass(frozen=True)
class Config(Architecture):
    """`model.lewm`: the architecture and the two-term objective L = L_pred + λ·SIGReg (§4)."""

    lambda_: float  # `lambda` in params.yaml
    sigreg_projections: int
    sigreg_knots: int
    sigreg_t_max: float


def normalised_images(pixels: Tensor, image_size: int) -> Tensor:
    """uint8 frames (B, [T,] 3, S, S) → ImageNet-normalised float images (B·T, 3, S, S), every encoder's
    input; a ValueError for another dtype or size."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"encode expects uint8 pixels, got {pixels.dtype}")
    if pixels.dim() not in (4, 5) or pixels.shape[-3:] != (3, image_size, image_size):
        raise ValueError(
            f"encode expects (B, [T,] 3, {image_size}, {image_size}) pixels, got {tuple(pixels.shape)}"
        )
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.reshape(-1, 3, image_size, image_size).float().div(255) - mean) / std


class Encoder(nn.Module):
    """Image backbone, random init: (N, 3, H, W) normalised images → (N, feature_dim) features."""

    def __init__(self, cfg: Architecture, image_size: int) -> None:
        super().__init__()
        if cfg.encoder == "vit":
            self.backbone = timm.create_model(
                "vit_tiny_patch16_224",
                pretrained=False,
                img_size=image_size,
                patch_size=cfg.patch_size,
                embed_dim=cfg.encoder_dim,
                depth=cfg.encoder_depth,
                num_heads=cfg.encoder_heads,
                num_classes=0,
                global_pool="token",  # the [CLS] token after the final LayerNorm
            )
        elif cfg.encoder == "resnet":
            self.backbone = timm.create_model(cfg.resnet_name, pretrained=False, num_classes=0)
        else:
            raise ValueError(f"model.encoder: unknown encoder {cfg.encoder!r} (known: vit, resnet)")
        self.feature_dim: int = self.backbone.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)


class MLP(nn.Module):
    """Linear → BatchNorm1d → GELU → Linear on the last axis of (..., in_dim); BN statistics span all
    leading axes (every frame / token of the batch)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class ActionEncoder(nn.Module):
    """(B, T, frameskip·A) action blocks → (B, T, D): a kernel-1 Conv1d smoothing, then a SiLU MLP, per
    time step."""

    def __init__(self, block_dim: int, smoothed_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.smooth = nn.Conv1d(block_dim, smoothed_dim, kernel_size=1)
        self.mlp = nn.Sequential(
            nn.Linear(smoothed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim)
        )

    def forward(self, action_blocks: Tensor) -> Tensor:
        smoothed = self.smooth(action_blocks.transpose(1, 2)).transpose(1, 2)
        return self.mlp(smoothed)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with its own affine LayerNorm in front; inner width heads·head_dim may
    exceed the model width."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor | None = None, past: list[Tensor] | None = None,
                queries: int | None = None) -> Tensor:
        """`mask` (T, T) boolean, True where query t may attend key s; None: token-causal (s ≤ t).

        For rollouts (lewm.models.lewm.JEPA.rollout): `past` holds this layer's keys and values of the
        tokens before `x` ([] at first) and gets x's appended, so earlier tokens are not recomputed;
        `queries` = n returns the outputs of the last n tokens only (the others are never used)."""
        batch, length, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(batch, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
        if past is not None:
            if past:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            past[:] = [k, v]
        if queries is not None:
            q = q[:, :, -queries:]
        num_queries, num_keys = q.shape[2], k.shape[2]
        if mask is None and num_queries != num_keys:  # the queries are the last tokens: causal from there
            mask = torch.ones(num_queries, num_keys, dtype=torch.bool, device=x.device).tril(
                num_keys - num_queries)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=mask is None
        )
        return self.to_out(out.transpose(1, 2).reshape(batch, num_queries, -1))


class FeedForward(nn.Sequential):
    """LayerNorm → Linear → GELU → Dropout → Linear → Dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )


class AdaLNZeroBlock(nn.Module):
    """DiT block: x += gate·Attn(LN(x)·(1+scale)+shift); x += gate·FF(LN(x)·(1+scale)+shift), with
    shift/scale/gate computed per token from the condition by a zero-initialised SiLU → Linear."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = CausalSelfAttention(dim, heads, head_dim, dropout)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_dim, dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, modulation: Tensor, past: list[Tensor] | None = None,
                queries: int | None = None) -> Tensor:
        """`modulation` = `self.modulation(cond)` (B, T, 6·dim), computed by the caller once per token;
        `past` and `queries` as in `CausalSelfAttention` (the output then has the last `queries` tokens)."""
        keep = slice(-queries, None) if queries is not None else slice(None)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, -1)
        attended = self.attn(self.norm_attn(x) * (1 + scale_attn) + shift_attn, past=past, queries=queries)
        x = x[:, keep] + gate_attn[:, keep] * attended
        return x + gate_mlp[:, keep] * self.mlp(
            self.norm_mlp(x) * (1 + scale_mlp[:, keep]) + shift_mlp[:, keep]
        )


class Predictor(nn.Module):
    """(B, T, D) embeddings and (B, T, D) action embeddings → (B, T, D); token t sees tokens ≤ t only and
    is conditioned on action t, so output t predicts the embedding after action t."""

    def __init__(self, cfg: Architecture, history: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.positions = nn.Parameter(torch.randn(1, history, dim))
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(
                dim, cfg.predictor_heads, cfg.predictor_head_dim, cfg.predictor_mlp_dim, cfg.predictor_dropout
            )
            for _ in range(cfg.predictor_depth)
        )
        self.norm = nn.LayerNorm(dim)

    def conditioning(self, action_emb: Tensor) -> list[Tensor]:
        """Every block's AdaLN modulation of the action embeddings (B, L, D): a token's modulation depends
        on its own action only, so a rollout computes it once per token instead of once per window."""
        return [block.modulation(action_emb) for block in self.blocks]

    def forward(self, z: Tensor, action_emb: Tensor | None = None, modulations: list[Tensor] | None = None,
                past: list[list[Tensor]] | None = None, last_only: bool = False) -> Tensor:
        """Tokens `z` (B, T, D) conditioned on `action_emb` (B, T, D), or on its precomputed
        `conditioning` sliced to the same T tokens → (B, T, D).

        For rollouts: `past`, one list per block (see `CausalSelfAttention`), caches the keys and values of
        earlier tokens, which then sit at positions 0 … P−1 before z's; `last_only` computes the last
        token's output only (B, 1, D): the final block's other queries are skipped."""
        if modulations is None:
            modulations = self.conditioning(action_emb)
        offset = past[0][0].shape[2] if past is not None and past[0] else 0
        x = z + self.positions[:, offset : offset + z.shape[1]]
        last_block = len(self.blocks) - 1
        for index, (block, modulation) in enumerate(zip(self.blocks, modulations, strict=True)):
            x = block(x, modulation, past=None if past is None else past[index],
                      queries=1 if last_only and index == last_block else None)
        return self.norm(x)


class JEPA(nn.Module):
    """The joint-embedding predictive world model without an objective: encoder + projector, action
    encoder, predictor and pred_proj (reference §2), with everything but `forward` of the `WorldModel`
    protocol. LeWM and PLDM subclass it with their own objectives. Pixels are uint8; ImageNet
    normalisation happens in `encode` only."""

    parts: tuple[str, ...] = ("encoder", "projector", "predictor", "pred_proj", "action_encoder")
    """The submodules `num_parameters` counts (a subclass appends its own)."""

    def __init__(
        self, cfg: Architecture, image_size: int, action_dim: int, frameskip: int, history: int
    ) -> None:
        super().__init__()
        if history < 1:
            raise ValueError(f"history must be ≥ 1, got {history}")
        self.cfg, self.image_size, self.history = cfg, image_size, history
        self.action_dim, self.frameskip = action_dim, frameskip
        self.encoder = Encoder(cfg, image_size)
        self.projector = MLP(self.encoder.feature_dim, cfg.projector_hidden, cfg.embed_dim)
        self.action_encoder = ActionEncoder(frameskip * action_dim, cfg.action_smoothed_dim, cfg.embed_dim)
        self.predictor = Predictor(cfg, history)
        self.pred_proj = MLP(cfg.embed_dim, cfg.projector_hidden, cfg.embed_dim)

    def encode(self, pixels: Tensor) -> Tensor:
        """uint8 (B, T, 3, H, W) → (B, T, D), or (B, 3, H, W) → (B, D). All frames form one encoder (and
        BatchNorm) batch."""
        z = self.projector(self.encoder(normalised_images(pixels, self.image_size)))
        return z.reshape(*pixels.shape[:-3], -1)

    def predict(self, z: Tensor, action_blocks: Tensor) -> Tensor:
        """Teacher-forced next embeddings: (B, T, D) and (B, T, frameskip·A) → (B, T, D), output t being
        the prediction of z_{t+1}; causal, T ≤ history, positions 0 … T−1."""
        if z.shape[1] > self.history or action_blocks.shape[:2] != z.shape[:2]:
            raise ValueError(
                f"predict needs z (B, T ≤ {self.history}, D) and action blocks (B, T, ·), got "
                f"{tuple(z.shape)} and {tuple(action_blocks.shape)}"
            )
        return self.pred_proj(self.predictor(z, self.action_encoder(action_blocks)))

    def rollout(
        self, z_context: Tensor, action_blocks: Tensor, context_actions: Tensor | None = None
    ) -> Tensor:
        """Autoregressive imagination without teacher forcing (reference §8.1), meant for eval mode.

        z_context (B or 1, C, D) or (B or 1, D): the observed embeddings; action_blocks (B, H, frameskip·A):
        the blocks executed from the last observed frame on; context_actions (·, C−1, frameskip·A): the
        blocks executed after the earlier context frames (needed only when C > 1). Each step runs the
        predictor on the last `history` embeddings (observed, then predicted), keeps its last output and
        appends it. Returns the H predicted embeddings (B, H, D); the last one is the planning target.
        """
        if z_context.dim() == 2:
            z_context = z_context.unsqueeze(1)
        batch, horizon = action_blocks.shape[:2]
        num_context = z_context.shape[1]
        if num_context > 1:
            if context_actions is None or context_actions.shape[1] != num_context - 1:
                raise ValueError(
                    f"rollout with {num_context} context embeddings needs {num_context - 1} context_actions"
                )
            action_blocks = torch.cat([context_actions.expand(batch, -1, -1), action_blocks], dim=1)
        # token i follows embedding i; its action encoding and AdaLN modulation are computed once here
        modulations = self.predictor.conditioning(self.action_encoder(action_blocks))  # (B, C−1+H, 6D) each
        sequence = list(z_context.expand(batch, -1, -1).unbind(1))
        # While the window has not slid (end ≤ history) its tokens keep their positions, and causal attention
        # leaves earlier tokens unchanged: their keys and values are cached and only new tokens computed.
        # Once it slides every position shifts, so the window is computed whole.
        past: list[list[Tensor]] = [[] for _ in self.predictor.blocks]
        cached = 0
        for end in range(num_context, num_context + horizon):
            start = max(0, end - self.history)
            if start == 0:
                first, cache = cached, past
                cached = end
            else:
                first, cache = start, None
            last = self.predictor(torch.stack(sequence[first:end], dim=1),
                                  modulations=[m[:, first:end] for m in modulations],
                                  past=cache, last_only=True)[:, -1]
            sequence.append(self.pred_proj(last))
        return torch.stack(sequence[num_context:], dim=1)

    def planning_cost(self, z_context: Tensor, z_goal: Tensor, context_actions: Tensor | None = None,
                      steps: str = "last") -> CostFn:
        """Squared distance between the imagined embeddings `steps` names and the goal's."""
        return goal_distance_cost(self, z_context, z_goal, context_actions, steps)

    def embed_and_predict(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The embeddings (B, T, D) of a batch of clips (`pixels` uint8 (B, T, 3, H, W), `actions`
        (B, T, frameskip·A)) and the teacher-forced prediction loss L_pred every objective starts from.

        The first `history` frames and action blocks are the context; output t is compared with the
        embedding `num_preds = T − history` frames later (element-wise MSE, target not detached).
        """
        embeddings = self.encode(batch["pixels"])
        num_preds = embeddings.shape[1] - self.history
        if num_preds < 1:
            raise ValueError(
                f"clips need more than history = {self.history} frames, got {embeddings.shape[1]}"
            )
        pred = self.predict(embeddings[:, : self.history], batch["actions"][:, : self.history])
        return embeddings, (pred - embeddings[:, num_preds:]).pow(2).mean()

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part and in total (reference §2.4)."""
        counts = {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in self.parts}
        counts["total"] = sum(counts.values())
        return counts


class LeWM(JEPA):
    """LeWM: the JEPA trained with L = L_pred + λ·SIGReg (reference §4)."""

    def __init__(
        self, cfg: Config, image_size: int, action_dim: int, frameskip: int, history: int
    ) -> None:
        super().__init__(cfg, image_size, action_dim, frameskip, history)
        self.sigreg = SIGReg(cfg.sigreg_projections, cfg.sigreg_knots, cfg.sigreg_t_max)  # no weights, no RNG

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses of one batch of clips (`embed_and_predict`): `pred`, `sigreg`, `total` (scalars with
        gradients) and the detached `embeddings` (B, T, D)."""
        embeddings, pred_loss = self.embed_and_predict(batch)
        sigreg_loss = self.sigreg(embeddings)
        return {
            "pred": pred_loss,
            "sigreg": sigreg_loss,
            "total": pred_loss + self.cfg.lambda_ * sigreg_loss,
            "embeddings": embeddings.detach(),
        }


Model = LeWM
"""The class `model.name: lewm` builds (lewm/checkpoint.py)."""
