"""The pixel decoder on frozen embeddings: shapes at the dataset's resolution for vector and patch-token
latents, a world model left bit-identical and gradient-free by decoder training, training that beats the
mean-image baseline on held-out frames, the decode stage's outputs (atomic, tied to one checkpoint), and
the decoded imagination in planning GIFs (three panels, metrics unchanged) and the VoE plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL
from PIL import Image

from lewm.checkpoint import load_model, model_meta, save_checkpoint
from lewm.config import ConfigError, DecoderConfig, load_params
from lewm.data.clips import ActionStats
from lewm.data.storage import EpisodeStore
from lewm.decoder import (
    DecoderMismatchError,
    PixelDecoder,
    default_decoder_path,
    encode_rows,
    find_decoder,
    fit_decoder,
    load_decoder,
    run_decoder,
)
from lewm.envs import get_world
from lewm.evaluation import build_manifest, evaluate_model, imagined_frames, write_episode_gif
from lewm.tracking import configure
from lewm.voe import episode_trajectories, plot_surprise, run_voe
from pipelines import decode as decode_pipeline
from pipelines import plan as plan_pipeline
from pipelines import voe as voe_pipeline

TINY_DECODER = ["decoder.steps=40", "decoder.batch_size=16", "decoder.width=8", "decoder.lr=5.0e-3",
                "decoder.max_frames=400"]


def decoder_config(**changes: float | int) -> DecoderConfig:
    """params.yaml's `decoder` section with the tiny test settings and `changes` (no defaults of its own)."""
    cfg = load_params(overrides=TINY_DECODER).decoder
    return dataclasses.replace(cfg, **changes)


def save_tiny_model(path: Path, store: EpisodeStore, model_config, seed: int) -> Path:
    """An untrained tiny LeWM checkpoint for `store` (32 px Push-T), initialised from `seed`."""
    meta = model_meta("pusht", model_config.name, model_config.settings, 32, 2, 5, 3,
                      ActionStats.from_store(store))
    torch.manual_seed(seed)
    save_checkpoint(path, {"model": meta.build().state_dict(), "meta": meta, "step": 0})
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_pusht, tiny_model_config):
    """runs/pusht/train/model.pt (a tiny untrained LeWM) for the session's tiny Push-T dataset, and a
    second checkpoint of the same architecture with other weights."""
    root = tmp_path_factory.mktemp("decode")
    store = EpisodeStore.open(tiny_pusht)
    model_path = save_tiny_model(root / "runs" / "pusht" / "train" / "model.pt", store, tiny_model_config, 0)
    other = save_tiny_model(root / "other" / "train" / "model.pt", store, tiny_model_config, 1)
    return root, tiny_pusht, model_path, other


@pytest.fixture(scope="module")
def decoded_run(tiny_run):
    """The decode stage run once (untracked) on the tiny run: its output directory and metrics."""
    root, data, model_path, _ = tiny_run
    out = root / "runs" / "pusht" / "decode"
    overrides = [*TINY_MODEL, *TINY_DECODER, "decoder.steps=10"]
    metrics = decode_pipeline.decode_stage("pusht", overrides=overrides, data_dir=data, model_path=model_path,
                                           out_dir=out, track=False, device="cpu")
    return out, metrics


# ------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize(("latent_shape", "image_size", "grid"), [
    ((192,), 64, 0),  # LeWM's latent at the CPU profile's size
    ((16,), 32, 0),
    ((192,), 224, 0),  # the paper profile's size: a 7 x 7 start grid
    ((64, 128), 64, 8),  # DINO-WM-style patch tokens: laid out on their 8 x 8 grid
    ((5, 7), 48, 0),  # tokens that are not a square grid: flattened
    ((16,), 40, 0),  # not a power-of-two multiple of the grid: resized at the end
])
def test_decoder_maps_a_latent_to_an_image_at_the_dataset_resolution(latent_shape, image_size, grid):
    decoder = PixelDecoder(latent_shape, image_size, width=4)
    z = torch.randn(3, *latent_shape)
    images = decoder(z)
    assert images.shape == (3, 3, image_size, image_size) and decoder.token_grid == grid
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(decoder(z.flatten(1)), images)  # flattened latents are accepted too
    frames = decoder.decode_frames(z)
    assert frames.dtype == np.uint8 and frames.shape == (3, image_size, image_size, 3)


def test_an_untrained_decoder_shows_the_mean_image_and_training_is_seeded():
    frames = torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8)
    latents = torch.randn(10, 6)
    decoder, _ = fit_decoder(latents, frames, 16, decoder_config(steps=1, lr=1e-12))
    mean = frames.double().mean(dim=0).numpy()
    assert np.abs(decoder.decode_frames(torch.randn(4, 6)).astype(float) - mean).max() <= 1.0
    state = torch.get_rng_state()
    runs = [fit_decoder(latents, frames, 16, decoder_config(steps=3))[1] for _ in range(2)]
    assert runs[0] == runs[1] and torch.equal(torch.get_rng_state(), state)  # own generator, global RNG alone


def test_bad_decoder_params_are_named():
    with pytest.raises(ConfigError, match=r"decoder\.width: must be ≥ 1"):
        load_params(overrides=["decoder.width=0"])
    with pytest.raises(ConfigError, match=r"decoder\.stepz: unknown parameter"):
        load_params(overrides=["decoder.stepz=3"])
    smoke, cpu = load_params(overrides=["profile=smoke"]).decoder, load_params().decoder
    assert smoke.steps < cpu.steps and smoke.max_frames < cpu.max_frames


# ---------------------------------------------------------------------------------------------- training


def test_decoder_training_leaves_the_world_model_untouched(tiny_run):
    """Eval mode while encoding (BatchNorm statistics untouched), no gradient into the world model, its
    weights and buffers bit-identical, its mode and requires_grad flags restored."""
    _, data, model_path, _ = tiny_run
    loaded = load_model(model_path)
    model, store = loaded.model, EpisodeStore.open(data)
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    latents = encode_rows(model, store.frames, np.arange(8))
    assert not latents.requires_grad and not latents.is_inference() and latents.shape == (8, 16)
    result = run_decoder(model, loaded.meta, store, decoder_config(steps=3))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is not None for p in result.decoder.parameters())  # the decoder itself did learn


def test_training_beats_the_mean_image_on_held_out_frames(tiny_run):
    _, data, model_path, _ = tiny_run
    loaded = load_model(model_path)
    store = EpisodeStore.open(data)
    result = run_decoder(loaded.model, loaded.meta, store, decoder_config())
    m = result.metrics
    assert m["n_test"] == len(np.concatenate([np.arange(r.start, r.stop) for r in
                                              map(store.episode_rows, store.episode_ids("test"))]))
    assert m["train.mse"] < 0.8 * m["train.mean_image_mse"]
    assert m["test.mse"] < m["test.mean_image_mse"] and m["test.psnr"] > m["test.mean_image_psnr"]
    assert np.mean(result.history[-5:]) < np.mean(result.history[:5])
    assert result.originals.shape == result.reconstructions.shape == (8, 32, 32, 3)


# ------------------------------------------------------------------------------------------------- stage


def test_decode_stage_writes_the_decoder_metrics_and_grid(decoded_run, tiny_run):
    out, metrics = decoded_run
    _, _, model_path, _ = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["decoder.pt", "metrics.json", "reconstructions.png"]
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    for key in ("test.mse", "test.psnr", "test.mean_image_mse", "test.mean_image_psnr", "train.mse"):
        assert np.isfinite(metrics[key])
    with Image.open(out / "reconstructions.png") as grid:
        assert grid.size[0] > grid.size[1] > 0
    assert default_decoder_path(model_path) == out / "decoder.pt"
    assert find_decoder(model_path) is not None and find_decoder(model_path, use=False) is None


def test_decode_stage_appends_to_the_training_run(tiny_run, tmp_path, mlflow_store):
    import mlflow

    _, data, model_path, _ = tiny_run
    configure(dataclasses.replace(load_params().tracking, experiment="decode-test"))
    with mlflow.start_run() as run:
        pass
    tracked_model = tmp_path / "train" / "model.pt"
    tracked_model.parent.mkdir()
    tracked_model.write_bytes(model_path.read_bytes())
    (tmp_path / "train" / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    decode_pipeline.decode_stage("pusht", overrides=[*TINY_MODEL, *TINY_DECODER, "decoder.steps=2",
                                                     "tracking.experiment=decode-test"],
                                 data_dir=data, model_path=tracked_model, out_dir=tmp_path / "decode",
                                 device="cpu")
    logged = mlflow.get_run(run.info.run_id)
    assert {"decode/test.mse", "decode/test.mean_image_mse", "decode/test.psnr"} <= set(logged.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "decode")}
    assert artifacts == {"decode/metrics.json", "decode/reconstructions.png"}
    # the decoder belongs to the copy it was trained on, which has the same bytes as the original
    assert isinstance(load_decoder(tmp_path / "decode" / "decoder.pt", model_path), PixelDecoder)


def test_a_failed_decode_run_leaves_the_last_outputs_alone(decoded_run, tiny_run, monkeypatch):
    out, _ = decoded_run
    _, data, model_path, _ = tiny_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lewm.decoder.torch.save", interrupted)  # killed while writing decoder.pt
    with pytest.raises(KeyboardInterrupt):
        decode_pipeline.decode_stage("pusht", overrides=[*TINY_MODEL, *TINY_DECODER, "decoder.steps=2"],
                                     data_dir=data, model_path=model_path, out_dir=out, track=False,
                                     device="cpu")
    assert {p.name for p in out.iterdir()} == set(before)  # no temporary file left behind
    assert (out / "decoder.pt").read_bytes() == before["decoder.pt"]

    monkeypatch.setattr(decode_pipeline, "run_decoder", interrupted)  # killed while training
    with pytest.raises(KeyboardInterrupt):
        decode_pipeline.decode_stage("pusht", overrides=[*TINY_MODEL, *TINY_DECODER], data_dir=data,
                                     model_path=model_path, out_dir=out, track=False, device="cpu")
    assert {p.name: p.read_bytes() for p in out.iterdir()}.keys() == before.keys()
    assert (out / "decoder.pt").read_bytes() == before["decoder.pt"]


def test_a_decoder_of_another_checkpoint_is_refused(decoded_run, tiny_run, tmp_path):
    out, _ = decoded_run
    _, data, model_path, other = tiny_run
    assert isinstance(load_decoder(out / "decoder.pt", model_path), PixelDecoder)
    with pytest.raises(DecoderMismatchError, match=r"another world model.*dvc repro decode@pusht"):
        load_decoder(out / "decoder.pt", other)
    # the stages that show decoded frames refuse it before any work
    with pytest.raises(DecoderMismatchError, match="another world model"):
        voe_pipeline.voe_stage("pusht", overrides=TINY_MODEL, data_dir=data, model_path=other,
                               out_dir=tmp_path / "voe", track=False, device="cpu",
                               decoder=out / "decoder.pt")
    assert not (tmp_path / "voe").exists()
    with pytest.raises(FileNotFoundError, match="decoder not found"):
        find_decoder(model_path, tmp_path / "absent.pt")
    assert find_decoder(other) is None  # no decode stage output beside it: plain GIFs and plots
    not_a_decoder = tmp_path / "decoder.pt"
    not_a_decoder.write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable decoder"):
        load_decoder(not_a_decoder, model_path)


def test_plan_stage_refuses_a_decoder_of_another_checkpoint(decoded_run, tiny_run, monkeypatch, tmp_path):
    out, _ = decoded_run
    root, data, _, other = tiny_run
    monkeypatch.chdir(root)
    (root / "data").mkdir(exist_ok=True)
    if not (root / "data" / "pusht").exists():
        (root / "data" / "pusht").symlink_to(data)
    with pytest.raises(DecoderMismatchError, match="another world model"):
        plan_pipeline.plan_stage("pusht", overrides=TINY_MODEL, train_dir=other.parent, out_dir=tmp_path,
                                 track=False, decoder=out / "decoder.pt")


# -------------------------------------------------------------------------------------- GIFs and the plot


def test_episode_gif_with_imagination_has_three_panels(tmp_path):
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200)]
    goal = np.full((8, 8, 3), 50, np.uint8)
    imagined = [np.full((8, 8, 3), v, np.uint8) for v in (10, 110, 210)]
    write_episode_gif(frames, goal, tmp_path / "e.gif", scale=3, imagined=imagined)
    with Image.open(tmp_path / "e.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (3 * (8 + 2 + 8 + 2 + 8), 3 * 8)
        gif.seek(1)
        pixels = np.array(gif.convert("RGB"))
    assert (pixels[:, :24] == 100).all() and (pixels[:, 30:54] == 50).all() and (pixels[:, -24:] == 110).all()
    with pytest.raises(ValueError, match="2 imagined frames for 3 observations"):
        write_episode_gif(frames, goal, tmp_path / "f.gif", imagined=imagined[:2])


def test_imagined_frames_run_in_step_with_the_observations():
    """Latent k of a plan chosen at step s is the model's guess of frame s + k·frameskip: frame t shows the
    latest plan's guess nearest in time, the last one past the horizon."""
    imagined = [torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[10.0], [11.0], [12.0]])]

    def decoder(latents):  # a "decoder" whose frames show the latent's value
        return latents.reshape(-1, 1, 1, 1).expand(-1, 2, 2, 3).to(torch.uint8).numpy()

    shown = imagined_frames([0, 12], imagined, 5, 20, decoder)
    assert [int(f[0, 0, 0]) for f in shown] == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                               10, 10, 10, 11, 11, 11, 11, 11]
    assert imagined_frames([], [], 5, 3, decoder) is None


def test_decoded_gifs_leave_planning_unchanged(tiny_run, tmp_path):
    _, data, model_path, _ = tiny_run
    loaded = load_model(model_path)
    store = EpisodeStore.open(data)
    params = load_params(overrides=["plan.cem.samples=8", "plan.cem.elites=2", "plan.cem.iterations=1",
                                    "plan.horizon=2", "plan.receding=1", "eval.budget=12", "eval.gifs=1",
                                    "eval.goal_offset=5"])
    manifest = build_manifest(store, "val", n=1, goal_offset=5, seed=0)
    decoder = PixelDecoder((16,), 32, width=4).decode_frames
    plain, plain_summary = evaluate_model(loaded.model, loaded.meta, manifest, store, params.plan,
                                          params.eval, gif_dir=tmp_path / "plain")
    decoded, decoded_summary = evaluate_model(loaded.model, loaded.meta, manifest, store, params.plan,
                                              params.eval, gif_dir=tmp_path / "decoded", decoder=decoder)
    untimed = [c for c in plain if not c.startswith("plan_time")]
    pd.testing.assert_frame_equal(plain[untimed], decoded[untimed])
    pd.testing.assert_series_equal(pd.Series({k: v for k, v in plain_summary.items() if "time" not in k}),
                                   pd.Series({k: v for k, v in decoded_summary.items() if "time" not in k}))
    widths = {}
    for path in sorted((tmp_path / "decoded").glob("*.gif")):
        with Image.open(path) as gif:
            widths[path.stem.split("_")[0]] = gif.size[0] // 4
    # panels + separators: only the world model imagines
    assert widths == {"lewm": 32 * 3 + 4, "random": 32 * 2 + 2, "zero": 32 * 2 + 2, "oracle": 32 * 2 + 2}


def test_voe_plot_shows_the_decoded_prediction_and_leaves_surprise_unchanged(tiny_run, tmp_path):
    _, data, model_path, _ = tiny_run
    loaded = load_model(model_path)
    store = EpisodeStore.open(data)
    cfg = dataclasses.replace(load_params().voe, episodes=2, steps=30, perturb_step=20, window=5, seed=3)
    decoder = PixelDecoder((16,), 32, width=4).decode_frames
    env_kwargs = store.manifest["env_kwargs"]
    plain = run_voe(loaded.model, loaded.meta, env_kwargs, cfg)
    decoded = run_voe(loaded.model, loaded.meta, env_kwargs, cfg, decoder=decoder)
    pd.testing.assert_frame_equal(plain.table, decoded.table)
    assert plain.decoded is None and plain.metrics == decoded.metrics
    trajectories = episode_trajectories(get_world("pusht"), env_kwargs, cfg, 0)
    assert list(decoded.decoded) == list(trajectories)
    for condition, panels in decoded.decoded.items():
        assert np.array_equal(panels["observed"], trajectories[condition].frames[cfg.perturb_step])
        assert {k: v.shape for k, v in panels.items()} == dict.fromkeys(panels, (32, 32, 3))
    predictions = [panels["predicted"] for panels in decoded.decoded.values()]
    assert all(np.array_equal(p, predictions[0]) for p in predictions)  # the context precedes the event
    plot_surprise(decoded.table, cfg.window, decoded.metrics, tmp_path / "voe.png", decoded.decoded)
    plot_surprise(plain.table, cfg.window, plain.metrics, tmp_path / "plain.png")
    with Image.open(tmp_path / "voe.png") as tall, Image.open(tmp_path / "plain.png") as short:
        assert tall.size[1] > short.size[1]
