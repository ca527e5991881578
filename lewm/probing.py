"""Probing frozen LeWM embeddings for physical quantities (reference §9, §11).

A probe maps one frozen embedding to one physical quantity of the frame's simulator state. Probes are fit
on frames of TRAIN episodes and scored on held-out TEST episodes, for the trained encoder and for a
randomly initialised encoder of the same architecture (the control a probe score is read against).

Quantities are the world's probe targets (`World.probe_targets`): by default derived from its state
names by one rule (`physical_quantities` in lewm/world.py), angles probed as (sin θ, cos θ). Push-T gives
`agent_xy`, `block_xy`, `block_angle` and `agent_velocity`. Embeddings are flattened per frame, so a model
with patch tokens is probed on all of its tokens.

Targets are standardised with TRAIN statistics, and probes read TRAIN-standardised embeddings. The linear
probe is closed-form ridge regression; the MLP probe has one hidden ReLU layer, is trained with Adam on
minibatches and keeps the weights of the epoch with the lowest loss on a held-out slice of the TRAIN
frames (never the test frames). Scores on the test frames: MSE on standardised targets, Pearson r and R²
(both averaged over the quantity's dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from lewm.checkpoint import ModelMeta
from lewm.config import ProbeConfig
from lewm.data.clips import strided_trajectories
from lewm.data.storage import EpisodeStore
from lewm.diagnostics import straightness
from lewm.envs import get_world
from lewm.models import WorldModel
from lewm.plots import save_figure
from lewm.world import Quantity

ENCODERS = ("trained", "random")
PROBES = ("linear", "mlp")
STRAIGHTNESS_EPISODES = 16  # test episodes whose latent paths give the straightness metric
EMBED_BATCH = 256
MLP_BATCH = 256
MLP_VALIDATION_FRACTION = 0.1  # slice of the train frames that selects the MLP's best epoch
MLP_PATIENCE = 30  # epochs without improvement on that slice before training stops
STD_FLOOR = 1e-8

@dataclass(frozen=True)
class Standardizer:
    """Per-column z-scoring with statistics of one (train) sample; constant columns keep scale 1."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > STD_FLOOR, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class RidgeProbe:
    """y ≈ x·weight + bias, fit in closed form with an unpenalised intercept."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeProbe:
        """Minimise ‖y − x·W − b‖² + α‖W‖² (a sum over samples, as scikit-learn's Ridge; x and y are
        centred first, so b is not penalised)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc + alpha * np.eye(x.shape[1])
        weight = np.linalg.solve(gram, xc.T @ yc)
        return cls(weight, y_mean - x_mean @ weight)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias


@dataclass(frozen=True)
class LinearReadout:
    """The linear probes of one encoder: embeddings and each quantity's targets are standardised with TRAIN
    statistics, a ridge probe maps the one to the other; `read` returns physical values."""

    embedding_scaler: Standardizer
    probes: dict[str, tuple[Quantity, Standardizer, RidgeProbe]]  # name → (quantity, target scaler, probe)

    @classmethod
    def fit(cls, z: np.ndarray, states: np.ndarray, quantities: tuple[Quantity, ...],
            alpha: float) -> LinearReadout:
        embedding_scaler = Standardizer.fit(z)
        x = embedding_scaler.transform(z)
        probes = {}
        for quantity in quantities:
            target_scaler = Standardizer.fit(quantity.values(states))
            y = target_scaler.transform(quantity.values(states))
            probes[quantity.name] = (quantity, target_scaler, RidgeProbe.fit(x, y, alpha))
        return cls(embedding_scaler, probes)

    def read(self, name: str, z: np.ndarray) -> np.ndarray:
        """Quantity `name`'s values (N, dims) in physical units, predicted from embeddings z (N, D)."""
        _, target_scaler, probe = self.probes[name]
        return probe.predict(self.embedding_scaler.transform(z)) * target_scaler.std + target_scaler.mean


def fit_mlp_probe(
    x: np.ndarray, y: np.ndarray, cfg: ProbeConfig, device: str | torch.device = "cpu"
) -> nn.Module:
    """A one-hidden-layer ReLU MLP from x (N, D) to y (N, K), trained with Adam on minibatches.

    A seeded `MLP_VALIDATION_FRACTION` of the rows is held out to pick the best epoch (training stops after
    `MLP_PATIENCE` epochs without improvement); initialisation and batch order come from `cfg.seed`.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.as_tensor(x, dtype=torch.float32, device=device)
    y_all = torch.as_tensor(y, dtype=torch.float32, device=device)
    order = torch.randperm(len(x_all), generator=generator).to(device)
    n_val = max(1, int(MLP_VALIDATION_FRACTION * len(x_all)))
    x_val, y_val = x_all[order[:n_val]], y_all[order[:n_val]]
    x_fit, y_fit = x_all[order[n_val:]], y_all[order[n_val:]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        mlp = nn.Sequential(
            nn.Linear(x.shape[1], cfg.mlp_hidden), nn.ReLU(), nn.Linear(cfg.mlp_hidden, y.shape[1])
        )
    mlp = mlp.to(device)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=cfg.mlp_lr)
    best_loss, best_state, stale = float("inf"), None, 0
    for _ in range(cfg.mlp_epochs):
        for batch in torch.randperm(len(x_fit), generator=generator).to(device).split(MLP_BATCH):
            loss = nn.functional.mse_loss(mlp(x_fit[batch]), y_fit[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            val_loss = float(nn.functional.mse_loss(mlp(x_val), y_val))
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            best_state = {k: v.clone() for k, v in mlp.state_dict().items()}
        else:
            stale += 1
            if stale >= MLP_PATIENCE:
                break
    if best_state is not None:
        mlp.load_state_dict(best_state)
    return mlp.eval()


def mlp_predict(mlp: nn.Module, x: np.ndarray) -> np.ndarray:
    """The MLP's predictions for x (N, D) as a float64 array."""
    device = next(mlp.parameters()).device
    with torch.inference_mode():
        return mlp(torch.as_tensor(x, dtype=torch.float32, device=device)).double().cpu().numpy()


def regression_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE over all entries, and Pearson r and R² per dimension averaged over dimensions."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    error = y_pred - y_true
    true_c, pred_c = y_true - y_true.mean(axis=0), y_pred - y_pred.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (true_c * pred_c).sum(axis=0) / np.sqrt((true_c**2).sum(axis=0) * (pred_c**2).sum(axis=0))
        r2 = 1.0 - (error**2).sum(axis=0) / (true_c**2).sum(axis=0)
    return {"mse": float((error**2).mean()), "r": float(r.mean()), "r2": float(r2.mean())}


def split_rows(store: EpisodeStore, split: str, max_frames: int) -> np.ndarray:
    """Frame rows of `split`'s episodes, evenly subsampled to at most `max_frames` (in frame order)."""
    rows = np.concatenate(
        [np.arange(r.start, r.stop) for r in map(store.episode_rows, store.episode_ids(split))]
    )
    if len(rows) > max_frames:
        rows = rows[np.linspace(0, len(rows) - 1, max_frames).round().astype(np.int64)]
    return rows


def encode_frames(
    model: WorldModel,
    frames: np.ndarray | torch.Tensor,
    device: str | torch.device = "cpu",
    rows: np.ndarray | None = None,
) -> torch.Tensor:
    """Frozen latents (N, *latent), float32 on the CPU, in eval mode, of uint8 frames: (N, H, W, 3) arrays
    (`frames[rows]` when `rows` is given, read one batch at a time so a memory-mapped dataset is never
    loaded whole) or (N, 3, H, W) tensors."""
    index = np.arange(len(frames)) if rows is None else np.asarray(rows)
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(index), EMBED_BATCH):
            batch = frames[index[start : start + EMBED_BATCH]]
            if not torch.is_tensor(batch):
                batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
            chunks.append(model.encode(batch.to(device)).float().cpu())
    return torch.cat(chunks)


def embed_frames(
    model: WorldModel,
    frames: np.ndarray | torch.Tensor,
    device: str | torch.device = "cpu",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """`encode_frames` flattened per frame: embeddings (N, D) as a numpy array (what probes read)."""
    return encode_frames(model, frames, device, rows).flatten(1).numpy()


def random_init_model(meta: ModelMeta, seed: int) -> WorldModel:
    """The checkpoint's architecture, freshly initialised from `seed` (global RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return meta.build().eval()


def probe_scores(
    train_z: np.ndarray,
    train_states: np.ndarray,
    test_z: np.ndarray,
    test_states: np.ndarray,
    quantities: tuple[Quantity, ...],
    cfg: ProbeConfig,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Fit a linear and an MLP probe per quantity on the train embeddings; score them on the test ones.

    One row per quantity × probe: `quantity`, `probe`, `dims`, `mse`, `r`, `r2`, `n_train`, `n_test`.
    """
    readout = LinearReadout.fit(train_z, train_states, quantities, cfg.ridge_alpha)
    x_train = readout.embedding_scaler.transform(train_z)
    x_test = readout.embedding_scaler.transform(test_z)
    rows = []
    for quantity in quantities:
        _, target_scaler, linear_probe = readout.probes[quantity.name]
        y_train = target_scaler.transform(quantity.values(train_states))
        y_test = target_scaler.transform(quantity.values(test_states))
        predictions = {
            "linear": linear_probe.predict(x_test),
            "mlp": mlp_predict(fit_mlp_probe(x_train, y_train, cfg, device), x_test),
        }
        for probe, y_pred in predictions.items():
            rows.append(
                {
                    "quantity": quantity.name,
                    "probe": probe,
                    "dims": quantity.dims,
                    **regression_scores(y_test, y_pred),
                    "n_train": len(x_train),
                    "n_test": len(x_test),
                }
            )
    return pd.DataFrame(rows)


def encoder_straightness(
    model: WorldModel, trajectories: torch.Tensor, device: str | torch.device = "cpu"
) -> float:
    """Latent straightness (reference §11) of uint8 trajectories (E, T, 3, H, W) under `model`'s encoder."""
    episodes, steps = trajectories.shape[:2]
    z = embed_frames(model, trajectories.flatten(0, 1), device)
    return straightness(torch.from_numpy(z).reshape(episodes, steps, -1))


@dataclass
class ProbeResult:
    """Probe scores of every encoder × probe × quantity, and the flat metrics derived from them."""

    table: pd.DataFrame
    metrics: dict[str, float]


def run_probing(
    model: WorldModel,
    meta: ModelMeta,
    store: EpisodeStore,
    cfg: ProbeConfig,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Probe the trained encoder and a random-init control on `store`'s train (fit) and test (score) frames,
    and measure both encoders' latent straightness on test trajectories (frames `frameskip` steps apart)."""
    train_rows = split_rows(store, "train", cfg.max_frames)
    test_rows = split_rows(store, "test", cfg.max_frames)
    quantities = get_world(meta.env).probe_targets
    trajectories = strided_trajectories(store, meta.frameskip, STRAIGHTNESS_EPISODES, split="test")
    encoders = {"trained": model.to(device), "random": random_init_model(meta, cfg.seed).to(device)}
    tables, metrics = [], {}
    for name, encoder in encoders.items():
        train_z = embed_frames(encoder, store.frames, device, train_rows)
        test_z = embed_frames(encoder, store.frames, device, test_rows)
        scores = probe_scores(
            train_z, store.states[train_rows], test_z, store.states[test_rows], quantities, cfg, device
        )
        tables.append(scores.assign(encoder=name))
        metrics[f"{name}.straightness"] = encoder_straightness(encoder, trajectories, device)
    table = pd.concat(tables, ignore_index=True)
    table = table[["encoder", *[c for c in table.columns if c != "encoder"]]]
    return ProbeResult(table, {**score_metrics(table), **metrics})


def score_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Flat `<encoder>.<probe>.<quantity>.<mse|r|r2>` metrics from a probe table."""
    return {
        f"{row.encoder}.{row.probe}.{row.quantity}.{score}": float(getattr(row, score))
        for row in table.itertuples(index=False)
        for score in ("mse", "r", "r2")
    }


def plot_probe_scores(table: pd.DataFrame, path: str | Path) -> None:
    """Test-set Pearson r per quantity, trained vs random-init encoder, one panel per probe."""
    quantities = list(dict.fromkeys(table["quantity"]))
    positions = np.arange(len(quantities))
    fig, axes = plt.subplots(1, len(PROBES), figsize=(5 * len(PROBES), 3.8), sharey=True)
    for ax, probe in zip(axes, PROBES, strict=True):
        for offset, encoder in zip((-0.2, 0.2), ENCODERS, strict=True):
            scores = table[(table["probe"] == probe) & (table["encoder"] == encoder)].set_index("quantity")
            ax.bar(positions + offset, scores.loc[quantities, "r"], width=0.4, label=f"{encoder} encoder")
        ax.set_xticks(positions, quantities, rotation=20)
        ax.set_title(f"{probe} probe (test episodes)")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Pearson r")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
