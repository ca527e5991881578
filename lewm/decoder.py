"""Seeing what the model imagines: a pixel decoder trained after the fact on FROZEN embeddings.

The world model never learns from the decoder. Frames are encoded once, with the model in eval mode, every
parameter's `requires_grad` off and under `torch.inference_mode()` (`frozen`, `encode_rows`); the decoder is
then fit by regression on those fixed latents, so no gradient can reach the world model and its weights and
BatchNorm statistics stay bit-identical. The decoder is display only: the planning GIFs show the decoded
imagined rollout of the chosen plan (lewm/evaluation.py) and the VoE plot the decoded prediction at the
perturbation (lewm/voe.py); no metric of those stages reads it.

- `PixelDecoder`: one frame's latent → an RGB image in [0, 1] at the dataset's resolution. Latents are first
  standardised with the train latents' per-element mean and std (models differ in scale). A vector latent
  `(D,)` is mapped by a linear layer onto a small grid (4 × 4 at 64 px, 7 × 7 at 224 px); patch tokens
  `(N, D)` with N a square number are laid out on their √N × √N grid and mapped by a 1 × 1 convolution; any
  other latent shape is flattened and treated as a vector. Then blocks of nearest ×2 upsampling, 3 × 3
  convolution, GroupNorm and GELU, and a 3 × 3 convolution to RGB (a bilinear resize covers an image size
  that is not the grid times a power of two), added to the logits of a learned base image and squashed by a
  sigmoid. The base image starts at the mean train image and the last convolution at zero, so training
  starts from the trivial baseline and learns what the latent adds to it.
- Loss: MSE in [0, 1] pixel space plus `decoder.l1_weight` × L1; Adam with a cosine decay to 0.
- `reconstruction_metrics`: MSE and PSNR on held-out TEST frames, and the same for the trivial baseline that
  always shows the mean train image: a decoder that does not beat it has read nothing from the latent.
- `save_decoder` / `load_decoder`: the file records the SHA-256 of the world-model checkpoint the decoder was
  trained on, and `load_decoder` refuses it for any other checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.checkpoint import ModelMeta
from lewm.config import DecoderConfig, section_mapping
from lewm.data.storage import EpisodeStore
from lewm.io import atomic_file, file_sha256
from lewm.models import WorldModel
from lewm.plots import save_figure
from lewm.probing import split_rows

FORMAT_VERSION = 1
ENCODE_BATCH = 256
DECODE_BATCH = 256
GRID_FRAMES = 8  # held-out frames shown in the reconstruction grid
MAX_BASE_GRID = 16  # a vector latent starts on the image size halved down to ≤ this (or 8 if it never is)


class DecoderMismatchError(ValueError):
    """The decoder was trained on another world-model checkpoint than the one it is asked to decode for."""


# ------------------------------------------------------------------------------------------------- model


def base_grid(image_size: int) -> int:
    """The side of the grid a vector latent is mapped onto: the image size halved while even and above 7
    (64 → 4, 224 → 7, 96 → 6), or 8 when that stays above `MAX_BASE_GRID` (odd sizes)."""
    side = image_size
    while side % 2 == 0 and side > 7:
        side //= 2
    return side if side <= MAX_BASE_GRID else 8


class PixelDecoder(nn.Module):
    """One frame's latent `(*latent_shape)` → an RGB image `(3, image_size, image_size)` in [0, 1]."""

    def __init__(self, latent_shape: tuple[int, ...], image_size: int, width: int) -> None:
        super().__init__()
        self.latent_shape, self.image_size, self.width = tuple(latent_shape), image_size, width
        tokens = self.latent_shape[0] if len(self.latent_shape) == 2 else 0
        self.token_grid = math.isqrt(tokens) if tokens > 1 and math.isqrt(tokens) ** 2 == tokens else 0
        self.start = self.token_grid or base_grid(image_size)
        upsamplings = max(0, math.floor(math.log2(image_size / self.start)))
        channels = [width * 2 ** min(3, upsamplings - k) for k in range(upsamplings + 1)]
        if self.token_grid:
            self.stem: nn.Module = nn.Conv2d(self.latent_shape[1], channels[0], kernel_size=1)
        else:
            self.stem = nn.Linear(math.prod(self.latent_shape), channels[0] * self.start**2)
        blocks: list[nn.Module] = [nn.GroupNorm(math.gcd(8, channels[0]), channels[0]), nn.GELU()]
        for k in range(upsamplings):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels[k], channels[k + 1], kernel_size=3, padding=1),
                nn.GroupNorm(math.gcd(8, channels[k + 1]), channels[k + 1]),
                nn.GELU(),
            ]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(channels[-1], 3, kernel_size=3, padding=1)
        nn.init.zeros_(self.head.weight)  # starts as the base image; the latent's part grows from zero
        nn.init.zeros_(self.head.bias)
        self.base = nn.Parameter(torch.zeros(3, image_size, image_size))  # logits of a learned base image
        self.register_buffer("latent_mean", torch.zeros(self.latent_shape))
        self.register_buffer("latent_std", torch.ones(self.latent_shape))

    @torch.no_grad()
    def set_statistics(self, latents: Tensor, base_image: Tensor) -> None:
        """Standardise inputs with the per-element mean and std of `latents` `(N, *latent_shape)`, and start
        the base image at `base_image` (`(S, S, 3)` in [0, 1], the mean train image: the untrained decoder
        shows the trivial baseline, and training learns what the latent adds to it)."""
        latents = latents.reshape(-1, *self.latent_shape).float()
        self.latent_mean.copy_(latents.mean(dim=0))
        if len(latents) > 1:  # one latent has no spread: keep the scale 1
            self.latent_std.copy_(latents.std(dim=0).clamp_min(1e-6))
        self.base.copy_(torch.logit(base_image.float().permute(2, 0, 1).clamp(1e-3, 1 - 1e-3)))

    def forward(self, z: Tensor) -> Tensor:
        """Latents `(B, *latent_shape)` (or flattened, `(B, prod)`) → images `(B, 3, S, S)` in [0, 1]."""
        z = (z.reshape(-1, *self.latent_shape).float() - self.latent_mean) / self.latent_std
        if self.token_grid:
            x = self.stem(z.transpose(1, 2).reshape(len(z), -1, self.token_grid, self.token_grid))
        else:
            x = self.stem(z.flatten(1)).reshape(len(z), -1, self.start, self.start)
        x = self.head(self.body(x))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return torch.sigmoid(x + self.base)

    def decode_frames(self, latents: Tensor) -> np.ndarray:
        """Latents `(N, *latent_shape)` (any device) → uint8 frames `(N, S, S, 3)`, in eval mode, batched."""
        device = self.latent_mean.device
        was_training = self.training
        self.eval()
        chunks = []
        with torch.inference_mode():
            for batch in latents.reshape(-1, *self.latent_shape).split(DECODE_BATCH):
                images = self(batch.to(device))
                chunks.append(images.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
        self.train(was_training)
        if not chunks:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return torch.cat(chunks).numpy()

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this decoder (stored with its weights)."""
        return {"latent_shape": list(self.latent_shape), "image_size": self.image_size, "width": self.width}


# -------------------------------------------------------------------------------------- frozen embeddings


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode with every parameter's `requires_grad` off, both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


def encode_rows(model: WorldModel, frames: np.ndarray, rows: np.ndarray,
                device: str | torch.device = "cpu") -> Tensor:
    """Frozen latents `(N, *latent)` (float32, CPU) of the uint8 frames `frames[rows]` (`(N, H, W, 3)`, read
    one batch at a time, so a memory-mapped dataset is never loaded whole)."""
    chunks = []
    with frozen(model), torch.inference_mode():
        for start in range(0, len(rows), ENCODE_BATCH):
            batch = np.ascontiguousarray(frames[rows[start:start + ENCODE_BATCH]])
            pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
            chunks.append(model.encode(pixels).float().cpu())
    return torch.cat(chunks).clone()  # cloned outside inference mode: an ordinary tensor, no graph


# ------------------------------------------------------------------------------------------------ training


def reconstruction_loss(images: Tensor, targets: Tensor, l1_weight: float) -> Tensor:
    """MSE + `l1_weight` · L1 between images in [0, 1]."""
    loss = F.mse_loss(images, targets)
    return loss + l1_weight * F.l1_loss(images, targets) if l1_weight else loss


def as_images(frames: Tensor, device: str | torch.device) -> Tensor:
    """uint8 frames `(B, H, W, 3)` → float images `(B, 3, H, W)` in [0, 1] on `device`."""
    return frames.to(device).permute(0, 3, 1, 2).float().div(255)


def mean_image(frames: Tensor | np.ndarray) -> np.ndarray:
    """The mean of uint8 frames `(N, S, S, 3)` as a float64 image in [0, 1] (accumulated without a float
    copy of the frames)."""
    frames = frames.numpy() if torch.is_tensor(frames) else frames
    return frames.mean(axis=0, dtype=np.float64) / 255


def fit_decoder(latents: Tensor, frames: Tensor, image_size: int, cfg: DecoderConfig,
                device: str | torch.device = "cpu") -> tuple[PixelDecoder, list[float]]:
    """Train a `PixelDecoder` on fixed latents `(N, *latent)` and their uint8 frames `(N, S, S, 3)`:
    `cfg.steps` Adam steps on batches drawn with replacement from a generator seeded with `cfg.seed`
    (initialisation too, leaving the global RNG as it was), starting from the mean image. Returns the
    decoder (eval mode) and the loss of every step."""
    if len(latents) != len(frames) or len(latents) == 0:
        raise ValueError(f"fit_decoder needs as many latents as frames (≥ 1), got {len(latents)} and "
                         f"{len(frames)}")
    latents = latents.detach()
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        decoder = PixelDecoder(tuple(latents.shape[1:]), image_size, cfg.width)
    decoder.set_statistics(latents, torch.from_numpy(mean_image(frames)))
    decoder.to(device).train()
    optimiser = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.steps)
    history = []
    for _ in range(cfg.steps):
        batch = torch.randint(len(latents), (cfg.batch_size,), generator=generator)
        loss = reconstruction_loss(decoder(latents[batch].to(device)), as_images(frames[batch], device),
                                   cfg.l1_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
    return decoder.eval(), history


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio (dB) of a mean squared error in [0, 1] pixel space."""
    return 10 * math.log10(1 / mse) if mse > 0 else float("inf")


def mean_squared_error(images: np.ndarray, targets: np.ndarray) -> float:
    """MSE in [0, 1] pixel space of uint8 frames `images` against uint8 frames `targets` (`(N, S, S, 3)`),
    or of one float image in [0, 1] (`(S, S, 3)`) against every target; in chunks, in float64."""
    total = 0.0
    for start in range(0, len(targets), DECODE_BATCH):
        target = targets[start:start + DECODE_BATCH].astype(np.float64) / 255
        image = images[start:start + DECODE_BATCH].astype(np.float64) / 255 if images.dtype == np.uint8 \
            else images
        total += float(((image - target) ** 2).sum())
    return total / targets.size


def reconstruction_metrics(decoded: np.ndarray, originals: np.ndarray, baseline_image: np.ndarray,
                           prefix: str) -> dict[str, float]:
    """`<prefix>.mse`, `<prefix>.psnr` of the decoded uint8 frames against the originals, and
    `<prefix>.mean_image_mse`, `<prefix>.mean_image_psnr` of the baseline that always shows `baseline_image`
    (float in [0, 1], `(S, S, 3)`); PSNR from the MSE over all pixels of all frames."""
    mse = mean_squared_error(decoded, originals)
    baseline = mean_squared_error(baseline_image, originals)
    return {f"{prefix}.mse": mse, f"{prefix}.psnr": psnr(mse),
            f"{prefix}.mean_image_mse": baseline, f"{prefix}.mean_image_psnr": psnr(baseline),
            f"{prefix}.mse_vs_mean_image": mse / baseline if baseline > 0 else float("nan")}


@dataclass
class DecoderResult:
    """A trained decoder, its flat metrics, the training losses, and the held-out frames of the grid with
    their reconstructions (uint8 `(K, S, S, 3)`)."""

    decoder: PixelDecoder
    metrics: dict[str, float]
    history: list[float]
    originals: np.ndarray
    reconstructions: np.ndarray


def run_decoder(model: WorldModel, meta: ModelMeta, store: EpisodeStore, cfg: DecoderConfig,
                device: str | torch.device = "cpu") -> DecoderResult:
    """Train a decoder on the frozen latents of up to `cfg.max_frames` TRAIN frames of `store` and score it
    on up to as many held-out TEST frames (evenly subsampled), against the mean train image."""
    train_rows = split_rows(store, "train", cfg.max_frames)
    test_rows = split_rows(store, "test", cfg.max_frames)
    if len(train_rows) == 0 or len(test_rows) == 0:
        raise ValueError(f"{store.path}: the decoder needs train and test frames, got {len(train_rows)} and "
                         f"{len(test_rows)}")
    train_z = encode_rows(model, store.frames, train_rows, device)
    test_z = encode_rows(model, store.frames, test_rows, device)
    train_frames = torch.from_numpy(np.ascontiguousarray(store.frames[train_rows]))
    test_frames = np.ascontiguousarray(store.frames[test_rows])
    started = time.perf_counter()
    decoder, history = fit_decoder(train_z, train_frames, meta.image_size, cfg, device)
    seconds = time.perf_counter() - started
    baseline = mean_image(train_frames)
    test_decoded = decoder.decode_frames(test_z)
    fit_rows = np.linspace(0, len(train_rows) - 1, min(len(train_rows), len(test_rows))).round().astype(int)
    metrics = {
        **reconstruction_metrics(test_decoded, test_frames, baseline, "test"),
        **reconstruction_metrics(decoder.decode_frames(train_z[fit_rows]), train_frames[fit_rows].numpy(),
                                 baseline, "train"),
        "n_train": len(train_rows),
        "n_test": len(test_rows),
        "steps": cfg.steps,
        "final_loss": float(np.mean(history[-max(1, cfg.steps // 20):])),
        "parameters": sum(p.numel() for p in decoder.parameters()),
        "train_seconds": seconds,
    }
    shown = np.linspace(0, len(test_rows) - 1, min(GRID_FRAMES, len(test_rows))).round().astype(int)
    return DecoderResult(decoder, metrics, history, test_frames[shown], test_decoded[shown])


def plot_reconstructions(result: DecoderResult, path: str | Path) -> None:
    """Held-out test frames (top row) above their reconstructions from the frozen latents (bottom row)."""
    count = len(result.originals)
    fig, axes = plt.subplots(2, count, figsize=(1.4 * count, 3.2), squeeze=False)
    for column in range(count):
        for row, images in enumerate((result.originals, result.reconstructions)):
            axes[row, column].imshow(images[column], interpolation="nearest")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    axes[0, 0].set_ylabel("test frame")
    axes[1, 0].set_ylabel("decoded")
    m = result.metrics
    fig.suptitle(f"decoder on frozen latents, held-out frames: MSE {m['test.mse']:.4f} "
                 f"(PSNR {m['test.psnr']:.1f} dB) vs mean train image {m['test.mean_image_mse']:.4f} "
                 f"({m['test.mean_image_psnr']:.1f} dB)", fontsize=8)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class WorldModelSource:
    """The world-model checkpoint a decoder was trained on."""

    path: str
    sha256: str
    env: str
    model: str  # `model.name`
    step: int


def save_decoder(path: str | Path, decoder: PixelDecoder, source: WorldModelSource,
                 cfg: DecoderConfig) -> None:
    """Write the decoder, its architecture, its settings and the checkpoint it decodes for, atomically."""
    state = {"format_version": FORMAT_VERSION, "decoder": decoder.state_dict(),
             "architecture": decoder.architecture(), "world_model": dict(vars(source)),
             "settings": section_mapping(cfg)}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def read_decoder(path: str | Path) -> dict[str, Any]:
    """The decoder file's dict, with clear errors for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: decoder not found (train one with `python -m pipelines.decode`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable decoder ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a decoder of this version (format_version {FORMAT_VERSION} expected); "
                         f"retrain it with `dvc repro decode@<env>`")
    return state


def load_decoder(path: str | Path, model_path: str | Path,
                 device: str | torch.device = "cpu") -> PixelDecoder:
    """The decoder at `path` (eval mode, on `device`), refused with `DecoderMismatchError` unless it was
    trained on the very checkpoint at `model_path` (same SHA-256)."""
    state = read_decoder(path)
    source = WorldModelSource(**state["world_model"])
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{model_path}: model checkpoint not found (the decoder {path} decodes for "
                                f"{source.path})")
    current = file_sha256(model_path)
    if current != source.sha256:
        raise DecoderMismatchError(
            f"{path}: a decoder of another world model: trained on {source.path} (SHA-256 "
            f"{source.sha256[:16]}…, {source.model} at step {source.step}), but {model_path} has SHA-256 "
            f"{current[:16]}…; retrain it with `dvc repro decode@{source.env}` (or run without the decoder: "
            f"--no-decoder)"
        )
    architecture = state["architecture"]
    decoder = PixelDecoder(tuple(architecture["latent_shape"]), architecture["image_size"],
                           architecture["width"])
    decoder.load_state_dict(state["decoder"])
    return decoder.to(device).eval()


def default_decoder_path(model_path: str | Path) -> Path:
    """Where the decode stage writes the decoder of the checkpoint at `model_path`: `decode/decoder.pt`
    beside the checkpoint's training directory (runs/<env>/train/model.pt → runs/<env>/decode/decoder.pt)."""
    return Path(model_path).parent.parent / "decode" / "decoder.pt"


def find_decoder(model_path: str | Path, decoder_path: str | Path | None = None, use: bool = True,
                 device: str | torch.device = "cpu") -> PixelDecoder | None:
    """The decoder a stage shows imagined frames with: none when `use` is false; the one at `decoder_path`
    when given (it must exist); else the one at `default_decoder_path(model_path)` when it exists. Any
    decoder found must belong to the checkpoint at `model_path` (`load_decoder`)."""
    if not use:
        return None
    if decoder_path is None:
        decoder_path = default_decoder_path(model_path)
        if not decoder_path.is_file():
            return None
    return load_decoder(decoder_path, model_path, device)
