"""The `lewm` command (pipelines/cli.py): stage subcommands forward their arguments to the stage's own
parser, `inspect` prints a dataset card whose numbers are those of the stored arrays, `preview` writes a GIF
of every frame of the first episodes, and bad input is one `error:` line with exit status 2."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lewm.config import PROJECT_ROOT
from lewm.data.card import ANGLE_BINS, MOVE_TOLERANCE, QUANTILES, TURN_TOLERANCE, quantile_key
from lewm.data.preview import CAPTION_HEIGHT, default_scale
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world, world_names
from lewm.world import Body, Quantity
from pipelines import cli

WORLDS = ("pusht", "tworoom", "reacher", "cube")

BODIES = {  # world → body → (position columns, angle columns): what each world's card must cover
    "pusht": {"agent": (["agent_x", "agent_y"], []), "block": (["block_x", "block_y"], ["block_angle"])},
    "tworoom": {"agent": (["agent_x", "agent_y"], [])},
    "reacher": {"arm": ([], ["shoulder_angle", "wrist_angle"])},
    "cube": {"hand": (["hand_x", "hand_y", "hand_z"], ["hand_yaw_angle"]),
             "cube": (["cube_x", "cube_y", "cube_z"], ["cube_yaw_angle"])},
}
FOLDS = {"cube_yaw_angle": 4}  # the cube looks the same after a quarter turn


def generate_args(env: str, out: Path) -> list[str]:
    """`generate` arguments for a tiny dataset: 4 episodes of 12 steps at 32 px (1 val, 1 test)."""
    sets = ["profile=smoke", f"data.{env}.episodes=4", f"data.{env}.max_steps=12",
            f"data.{env}.image_size=32", f"data.{env}.workers=1", f"data.{env}.val_fraction=0.25",
            f"data.{env}.test_fraction=0.25"]
    return ["--env", env, *(arg for s in sets for arg in ("--set", s)), "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny dataset per world, each made by `lewm generate` (in this process)."""
    root = tmp_path_factory.mktemp("cli-data")
    for env in WORLDS:
        assert cli.main(["generate", *generate_args(env, root / env)]) == 0
    return {env: root / env for env in WORLDS}


def run_lewm(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`lewm *argv` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------- commands


def test_every_pipeline_entry_point_is_a_command() -> None:
    """Each public pipelines/ module runnable with `python -m` is a subcommand running that module
    (private ones, such as the `_reaper` watcher, are plumbing)."""
    runnable = {
        f"pipelines.{path.stem}" for path in (PROJECT_ROOT / "pipelines").glob("*.py")
        if 'if __name__ == "__main__":' in path.read_text() and path.stem != "cli"
        and not path.stem.startswith("_")
    }
    assert {module for module, _ in cli.STAGES.values()} == runnable, \
        "a stage module was added or removed: list it in pipelines.cli.STAGES"
    assert all(module == f"pipelines.{name}" for name, (module, _) in cli.STAGES.items())


def test_help_lists_every_command_with_a_one_line_description(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_lewm(["--help"], capsys)
    assert status == 0 and out.startswith("usage: lewm")
    listed = dict(re.findall(r"^    (\w+) +(.+)$", out, flags=re.MULTILINE))
    assert listed == {**{name: text for name, (_, text) in cli.STAGES.items()}, **cli.DATASET_COMMANDS}


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_stage_command_hands_its_arguments_to_the_stage_main(stage: str, monkeypatch) -> None:
    """`lewm <stage> ARGS` runs the stage module's `main` with argv `lewm <stage> ARGS`, unchanged, and
    restores sys.argv afterwards."""
    seen: list[list[str]] = []
    fake = types.SimpleNamespace(main=lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: fake if name == cli.STAGES[stage][0] else pytest.fail(name))
    args = ["--env", "pusht", "--set", "train.max_steps=10", "--set", "a=b c", "-x", "--help"]
    before = list(sys.argv)
    assert cli.main([stage, *args]) == 0
    assert seen == [[f"lewm {stage}", *args]]
    assert sys.argv == before


@pytest.mark.parametrize("stage, option", [("generate", "--no-progress"), ("train", "--no-resume"),
                                           ("compare", "{curves,plan,solvers,report,all}")])
def test_stage_help_is_the_stage_parser_s_own(stage: str, option: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_lewm([stage, "--help"], capsys)
    module = importlib.import_module(cli.STAGES[stage][0])
    assert status == 0
    assert out.startswith(f"usage: lewm {stage} ")
    assert option in out and module.__doc__.splitlines()[0] in " ".join(out.split())


def test_generate_command_writes_the_dataset_it_is_asked_for(datasets: dict[str, Path]) -> None:
    for env, path in datasets.items():
        store = EpisodeStore.open(path)
        assert store.manifest["env"] == env and store.manifest["episodes"] == 4
        assert store.manifest["steps"] == 4 * 12 and store.frames.shape[1:] == (32, 32, 3)


# ---------------------------------------------------------------------------------------------- inspect


def moved_fraction(store: EpisodeStore, extent: tuple[tuple[float, float], ...], positions: list[str],
                   angles: list[str]) -> float:
    """Transitions in which a pose column changed beyond the card's tolerances, episode by episode."""
    moved = total = 0
    for _, episode in store.steps.groupby("episode"):
        change = np.diff(episode[[f"state_{n}" for n in positions + angles]].to_numpy(), axis=0)
        spans = [high - low for low, high in extent]
        over = [np.abs(change[:, i]) > MOVE_TOLERANCE * spans[i] for i in range(len(positions))]
        for j, name in enumerate(angles, start=len(positions)):
            period = 2 * math.pi / FOLDS.get(name, 1)
            turn = np.abs((change[:, j] + period / 2) % period - period / 2)
            over.append(turn > TURN_TOLERANCE)
        moved += int(np.logical_or.reduce(over).sum())
        total += len(change)
    return moved / total


@pytest.mark.parametrize("env", WORLDS)
def test_inspect_card_matches_the_stored_arrays(env: str, datasets: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_lewm(["inspect", "--env", env, "--data", str(datasets[env]), "--json"], capsys)
    assert status == 0, err
    card = json.loads(out)
    path = datasets[env]
    manifest = json.loads((path / "manifest.json").read_text())
    steps = pd.read_parquet(path / "steps.parquet")
    episodes = pd.read_parquet(path / "episodes.parquet")
    frames = np.load(path / "frames.npy", mmap_mode="r")

    assert card["env"] == env and card["policy"]["name"] == manifest["policy"]
    assert card["policy"]["action_noise"] == manifest["action_noise"] and card["seed"] == manifest["seed"]
    assert card["episodes"] == len(episodes) == manifest["episodes"] == 4
    assert card["frames"] == len(frames) == len(steps)
    assert card["transitions"] == manifest["steps"] == int((episodes["length"] - 1).sum())
    assert card["image_size"] == list(frames.shape[1:3])
    for split, ids in manifest["splits"].items():
        lengths = episodes.loc[episodes["episode"].isin(ids), "length"]
        assert card["splits"][split] == {"episodes": len(ids), "transitions": int((lengths - 1).sum()),
                                         "frames": int(lengths.sum())}

    bodies = {body["name"]: body for body in card["coverage"]["bodies"]}
    assert set(bodies) == set(BODIES[env])
    for name, (positions, angles) in BODIES[env].items():
        body = bodies[name]
        assert [d["name"] for d in body["positions"]] == positions
        assert [d["name"] for d in body["angles"]] == angles
        for dim in body["positions"] + body["angles"]:
            values = steps[f"state_{dim['name']}"].to_numpy()
            assert dim["min"] == values.min() and dim["max"] == values.max()
            for q in QUANTILES:
                assert dim[quantile_key(q)] == pytest.approx(np.quantile(values, q))
        if positions:
            grid, extent = body["occupancy"]["grid"], body["occupancy"]["extent"]
            xy = [np.clip(steps[f"state_{n}"], *extent[i]) for i, n in enumerate(positions[:2])]
            counts, *_ = np.histogram2d(*xy, bins=grid, range=extent)
            assert body["occupancy"]["fraction"] == np.count_nonzero(counts) / grid**2
            assert 0 < body["occupancy"]["fraction"] <= 1
        else:
            assert body["occupancy"] is None
        for angle in body["angles"]:
            period = 2 * math.pi / FOLDS.get(angle["name"], 1)
            counts, _ = np.histogram(np.mod(steps[f"state_{angle['name']}"], period), bins=ANGLE_BINS,
                                     range=(0, period))
            assert angle["coverage"] == np.count_nonzero(counts) / ANGLE_BINS
            assert angle["folds"] == FOLDS.get(angle["name"], 1)

    contact_steps = sum(int((steps["n_contacts"].iloc[start:start + length - 1] > 0).sum())
                        for start, length in episodes[["start", "length"]].itertuples(index=False))
    assert card["contact"]["transitions"] == contact_steps
    assert card["contact"]["fraction"] == pytest.approx(contact_steps / manifest["steps"])
    assert card["contact"]["fraction"] == pytest.approx(manifest["contact_fraction"])
    assert 0 <= card["contact"]["fraction"] <= 1 and "n_contacts" in card["contact"]["how"]
    if env == "reacher":
        assert card["contact"]["fraction"] == 0  # contacts are disabled in its simulation

    objects = {name: dims for name, dims in BODIES[env].items() if name not in ("agent", "arm", "hand")}
    assert [m["body"] for m in card["object_motion"]] == list(objects)
    extents = {body.name: body.extent for body in get_world(env).bodies}
    for motion in card["object_motion"]:
        positions, angles = objects[motion["body"]]
        expected = moved_fraction(EpisodeStore.open(path), extents[motion["body"]], positions, angles)
        assert motion["fraction"] == pytest.approx(expected) and 0 <= motion["fraction"] <= 1
        assert motion["transitions"] == round(expected * manifest["steps"])


def test_inspect_prints_a_readable_card(datasets: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["inspect", "--env", "pusht", "--data", str(datasets["pusht"])]
    status, out, _ = run_lewm(argv, capsys)
    _, as_json, _ = run_lewm([*argv, "--json"], capsys)
    card = json.loads(as_json)
    assert status == 0
    lines = out.splitlines()
    assert lines[1] == "env          pusht (image_size=32, max_steps=12)"
    assert lines[2].startswith("policy       expert, action noise 0.1")
    assert "episodes     4 (train 2, val 1, test 1)" in lines
    assert "transitions  48 (train 24, val 12, test 12)" in lines
    assert any(line.startswith("    block_angle ") for line in lines)
    assert "angle coverage: block_angle" in out and "occupancy:" in out
    contact = card["contact"]
    assert (f"contact      {contact['fraction']:.1%} of transitions ({contact['transitions']} of 48)"
            in lines)
    assert "how: transitions whose stored n_contacts > 0" in out and "block moved" in out


def test_every_world_declares_the_bodies_a_card_covers() -> None:
    assert set(world_names()) == set(WORLDS)
    for env in WORLDS:
        world = get_world(env)
        assert [body.name for body in world.bodies] == list(BODIES[env])
        assert sum(body.role == "agent" for body in world.bodies) == 1
        assert world.contacts != "contact points during the step"  # says what its env counts
        names = world.env_class.state_names
        for body in world.bodies:
            positions, angles = BODIES[env][body.name]
            assert [names[c] for c in (body.position.columns if body.position else ())] == positions
            assert [names[a.columns[0]] for a in body.angles] == angles


def test_body_rejects_inconsistent_definitions() -> None:
    xy = Quantity("p_xy", (0, 1))
    with pytest.raises(ValueError, match="role 'thing'"):
        Body("p", "thing", xy, ((0, 1), (0, 1)))
    with pytest.raises(ValueError, match="one \\(low, high\\) range with low < high per position axis"):
        Body("p", "agent", xy, ((0, 1),))
    with pytest.raises(ValueError, match="angles must be single-column angle quantities"):
        Body("p", "agent", xy, ((0, 1), (0, 1)), angles=(xy,))
    with pytest.raises(ValueError, match="no position and no angle"):
        Body("p", "agent")


# ---------------------------------------------------------------------------------------------- preview


def test_preview_gif_holds_every_frame_of_the_first_episodes(datasets: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "previews" / "pusht.gif"
    status, printed, err = run_lewm(["preview", "--env", "pusht", "--data", str(datasets["pusht"]),
                                     "--episodes", "2", "--out", str(out)], capsys)
    assert status == 0, err
    store = EpisodeStore.open(datasets["pusht"])
    stored = np.concatenate([store.frames[store.episode_rows(ep)] for ep in (0, 1)])
    assert printed.strip() == f"wrote {len(stored)} frames of episodes 0, 1 -> {out}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pusht.gif"]  # no temporary file left
    scale = default_scale(32)
    with Image.open(out) as gif:
        assert gif.n_frames == len(stored) == 26
        assert gif.size == (32 * scale, 32 * scale + CAPTION_HEIGHT)
        for index in (0, 12, 13, 25):  # first and last frame of each episode
            gif.seek(index)
            shown = np.asarray(gif.convert("RGB"))[: 32 * scale : scale, ::scale].astype(int)
            errors = [np.abs(shown - frame).mean() for frame in stored]
            assert errors[index] < 2 and errors[index] == min(errors)  # the stored frame, in order


def test_preview_takes_all_episodes_when_asked_for_more(datasets: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "all.gif"
    status, printed, _ = run_lewm(["preview", "--env", "cube", "--data", str(datasets["cube"]),
                                   "--episodes", "50", "--out", str(out), "--scale", "2"], capsys)
    assert status == 0 and printed.strip().endswith(f"episodes 0, 1, 2, 3 -> {out}")
    with Image.open(out) as gif:
        assert gif.n_frames == 4 * 13 and gif.size == (64, 64 + CAPTION_HEIGHT)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "lewm: unknown command 'nosuch' (known: generate, manifest, train"),
    ([], "lewm: a command is required"),
    (["inspect", "--env", "pusht", "--data", "{tmp}/missing"], "{tmp}/missing: dataset directory not found"),
    (["inspect", "--env", "nosuch", "--data", "{pusht}"], "unknown environment 'nosuch' (known: cube, pusht"),
    (["preview", "--env", "nosuch", "--data", "{pusht}"], "unknown environment 'nosuch'"),
    (["inspect", "--env", "tworoom", "--data", "{pusht}"], "a 'pusht' dataset, not 'tworoom'"),
    (["inspect", "--data", "{pusht}"], "lewm inspect: the following arguments are required: --env"),
    (["preview", "--env", "pusht", "--data", "{pusht}", "--episodes", "0", "--out", "{tmp}/x.gif"],
     "episodes must be ≥ 1, got 0"),
    (["preview", "--env", "pusht", "--data", "{pusht}", "--out", "{tmp}"], "{tmp}: is a directory"),
    (["--json"], "lewm: unrecognized arguments: --json"),
    (["generate", "--env", "nosuch", "--out", "{tmp}/x"], "no dataset configured for environment 'nosuch'"),
    (["train", "--env", "pusht", "--bogus"], "lewm train: unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_error_line_and_status_2(argv: list[str], message: str, datasets: dict[str, Path],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, pusht=datasets["pusht"])

    status, _, err = run_lewm([fill(arg) for arg in argv], capsys)
    assert status == 2
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: ") and fill(message) in last
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 or argv == []  # bare `lewm` also prints the help
    assert not (tmp_path / "x.gif").exists() and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ the installed console script


def lewm_script() -> Path:
    """The installed `lewm` script next to this interpreter (`make install` creates it)."""
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == {"lewm": "pipelines.cli:main"}
    installed = importlib.metadata.entry_points(group="console_scripts", name="lewm")
    assert [entry.value for entry in installed] == ["pipelines.cli:main"], \
        "the installed package predates the `lewm` entry point: run `make install`"
    script = Path(sys.executable).parent / "lewm"
    assert script.is_file(), f"{script}: not installed (run `make install`)"
    return script


def test_console_script_generates_the_same_dataset_as_the_stage(datasets: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """The installed `lewm generate` run from another directory writes, byte for byte, the dataset that
    the same arguments give in-process; `--help` and a bad command behave as documented."""
    script = lewm_script()
    out = tmp_path / "pusht"
    done = subprocess.run([str(script), "generate", *generate_args("pusht", out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("generated 4 pusht episodes")
    for name in ("manifest.json", "frames.npy", "steps.parquet", "episodes.parquet"):
        assert (out / name).read_bytes() == (datasets["pusht"] / name).read_bytes(), name

    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and all(f"    {name} " in shown.stdout for name in cli.STAGES)
    bad = subprocess.run([str(script), "nosuch"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: lewm: unknown command 'nosuch'")
    assert len(bad.stderr.splitlines()) == 1
