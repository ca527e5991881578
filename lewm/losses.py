"""The LeWM objective L = L_pred + λ·SIGReg (reference §4): a teacher-forced next-embedding MSE and the
anti-collapse regulariser on the embeddings of every frame. No stop-gradient, no EMA: the encoder gets
gradients through the context, the targets and SIGReg."""

from __future__ import annotations

from torch import Tensor

from lewm.config import TrainConfig
from lewm.model import LeWM
from lewm.sigreg import SIGReg


def prediction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise mean squared error over batch, positions and dims; the target is not detached."""
    return (pred - target).pow(2).mean()


def lewm_loss(
    model: LeWM, batch: dict[str, Tensor], sigreg: SIGReg, lambda_: float = TrainConfig.lambda_
) -> dict[str, Tensor]:
    """Losses of one batch of clips (`pixels` uint8 (B, T, 3, H, W), `actions` (B, T, frameskip·A)).

    The first `history` frames and action blocks are the context; output t is compared with the embedding
    `num_preds = T − history` frames later. Returns `total`, `pred`, `sigreg` (scalars with gradients) and
    the detached `embeddings` (B, T, D) for diagnostics.
    """
    embeddings = model.encode(batch["pixels"])
    num_frames = embeddings.shape[1]
    num_preds = num_frames - model.history
    if num_preds < 1:
        raise ValueError(f"clips need more than history = {model.history} frames, got {num_frames}")
    pred = model.predict(embeddings[:, : model.history], batch["actions"][:, : model.history])
    pred_loss = prediction_loss(pred, embeddings[:, num_preds:])
    sigreg_loss = sigreg(embeddings)
    return {
        "total": pred_loss + lambda_ * sigreg_loss,
        "pred": pred_loss,
        "sigreg": sigreg_loss,
        "embeddings": embeddings.detach(),
    }
