"""A checkpoint records the code that wrote it and the run's config; loading refuses other model code, the
stages refuse other model settings, and a refused resume says what differs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lewm
from lewm import checkpoint
from lewm.checkpoint import CheckpointMismatchError, check_settings, load_model, model_meta, save_checkpoint
from lewm.config import load_params, mapping_differences
from lewm.data.clips import ActionStats
from lewm.data.storage import EpisodeRecord, EpisodeStore, write_dataset
from lewm.train import train
from pipelines._stage import load_model_and_data

STATS = ActionStats.from_dict({"mean": [0.0, 0.0], "std": [1.0, 1.0]})


def saved_tiny(path: Path, model_config) -> Path:
    """A checkpoint of the tiny LeWM (32 px, frameskip 5, history 3: the tiny dataset's layout)."""
    params = load_params()
    meta = model_meta("pusht", "lewm", model_config.settings, 32, 2, params.clip.frameskip,
                      params.clip.history, STATS)
    save_checkpoint(path, {"model": meta.build().state_dict(), "meta": meta, "step": 0})
    return path


def test_a_checkpoint_records_the_package_commit_and_model_sources(tiny_model_config, tmp_path):
    stored = torch.load(saved_tiny(tmp_path / "m.pt", tiny_model_config), weights_only=False)["code"]
    assert stored["package"] == lewm.__version__
    sources = Path(lewm.__file__).parent / "models"
    assert set(stored["model_sources"]) == {p.name for p in sources.glob("*.py")}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sources, capture_output=True, text=True)
    if head.returncode == 0:
        assert stored["commit"].removesuffix("+dirty") == head.stdout.strip()


def test_a_checkpoint_of_other_model_code_is_refused_naming_the_files(tiny_model_config, tmp_path,
                                                                      monkeypatch):
    path = saved_tiny(tmp_path / "m.pt", tiny_model_config)
    assert load_model(path).meta.model == "lewm"  # the same code loads it
    edited = tmp_path / "models"
    shutil.copytree(checkpoint.MODEL_SOURCES, edited, ignore=shutil.ignore_patterns("__pycache__"))
    (edited / "lewm.py").write_text((edited / "lewm.py").read_text() + "\n# an edit\n")
    (edited / "extra.py").write_text("")
    monkeypatch.setattr(checkpoint, "MODEL_SOURCES", edited)
    with pytest.raises(CheckpointMismatchError,
                       match=r"other model code \(lewm/models/extra\.py added; lewm/models/lewm\.py changed;"
                             r" written at commit .*retrain with `dvc repro`"):
        load_model(path)


def test_stages_refuse_a_checkpoint_whose_settings_differ_from_the_params(tiny_model, tiny_model_config,
                                                                          tiny_pusht, tmp_path):
    path = saved_tiny(tmp_path / "m.pt", tiny_model_config)
    same = load_params(overrides=tiny_model, env="pusht")
    loaded, store = load_model_and_data("pusht", same, path, tiny_pusht)
    assert loaded.meta.settings["embed_dim"] == 16 and store.manifest["env"] == "pusht"

    other = load_params(overrides=[*tiny_model, "model.lewm.embed_dim=24", "clip.history=2"], env="pusht")
    expected = (r"trained with other settings than the params give \(checkpoint → params: "
                r"clip\.history: 3 → 2; model\.lewm\.embed_dim: 16 → 24\); "
                r"retrain with `dvc repro train@pusht`")
    with pytest.raises(CheckpointMismatchError, match=expected):
        load_model_and_data("pusht", other, path, tiny_pusht)
    with pytest.raises(CheckpointMismatchError, match=expected):
        check_settings(loaded.meta, other, path)


def test_a_refused_resume_names_what_differs(tiny_model, tiny_pusht, tmp_path, capsys):
    params = load_params(overrides=[*tiny_model, "train.max_steps=2", "train.checkpoint_every=1"])
    train(params, "pusht", tiny_pusht, tmp_path, progress=False)
    stored = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert stored["config"]["env"] == "pusht" and stored["config"]["model"]["embed_dim"] == 16

    changed = load_params(overrides=[*tiny_model, "train.max_steps=2", "train.lr=0.00123"])
    capsys.readouterr()
    outcome = train(changed, "pusht", tiny_pusht, tmp_path, progress=True)
    output = capsys.readouterr().out
    assert f"last.pt: it belongs to another run (train.lr: {params.train.lr!r} → 0.00123)" in output
    assert outcome.metrics["steps"] == 2  # trained from scratch, not resumed


def test_a_checkpoint_trained_on_other_frames_is_not_resumed(tiny_model, tiny_pusht, tmp_path, capsys):
    """The same generation parameters with other frames (a world's rendering code changed): checkpoints/
    persists across `dvc repro`, so training must start afresh rather than resume the old data's run."""
    params = load_params(overrides=[*tiny_model, "train.max_steps=2", "train.checkpoint_every=1"])
    train(params, "pusht", tiny_pusht, tmp_path / "run", progress=False)
    store = EpisodeStore.open(tiny_pusht)
    redrawn = [
        EpisodeRecord(int(episode), int(seed), 255 - store.frames[rows], store.actions[rows][:-1],
                      store.states[rows], store.proprio[rows], store.n_contacts[rows][:-1])
        for episode, seed in store.episodes[["episode", "seed"]].itertuples(index=False)
        for rows in [store.episode_rows(episode)]
    ]
    write_dataset(tmp_path / "redrawn", iter(redrawn), store.manifest)
    capsys.readouterr()
    outcome = train(params, "pusht", tmp_path / "redrawn", tmp_path / "run", progress=True)
    assert "last.pt: it belongs to another run (data: " in capsys.readouterr().out
    assert outcome.metrics["steps"] == 2  # trained from scratch, not resumed


def test_mapping_differences_names_nested_added_and_removed_keys():
    before = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    after = {"a": {"b": 2, "c": (1, 2)}, "e": None}
    assert mapping_differences(before, after) == ["a.b: 1 → 2", "d: 'x' → (none)", "e: (none) → None"]
    assert mapping_differences(before, before) == []
