"""The commands a new user runs work from any shell: DVC stage commands go through scripts/python, which
finds the project's interpreter without an activated venv, and the params profiles they read all load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lewm.config import PROJECT_ROOT, ConfigError, load_params

LAUNCHER = PROJECT_ROOT / "scripts" / "python"


def test_every_dvc_stage_runs_a_pipeline_module_through_the_project_interpreter():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)  # foreach stages keep their body under `do`, matrix stages at the top
        command = body["cmd"].split()
        assert command[:2] == ["scripts/python", "-m"], f"{name}: {body['cmd']}"
        assert (PROJECT_ROOT / (command[2].replace(".", "/") + ".py")).is_file(), name


def test_project_interpreter_is_found_with_nothing_activated(tmp_path):
    """A bare PATH (no venv on it) and another working directory still get the interpreter with lewm."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = "import sys, lewm; print(sys.prefix)"
    out = subprocess.run([str(LAUNCHER), "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    venv = PROJECT_ROOT / ".venv"
    assert Path(out) == (venv.resolve() if venv.is_dir() else Path(sys.prefix))


def test_missing_environment_is_a_clear_error(tmp_path):
    """No .venv and a python3 without the project's packages: exit 127 telling the user to install."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(LAUNCHER, tmp_path / "scripts" / "python")
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    stub = stub_bin / "python3"
    stub.write_text("#!/bin/sh\nexit 1\n")  # a python3 that has none of the packages
    stub.chmod(0o755)
    env = {"PATH": f"{stub_bin}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([str(tmp_path / "scripts" / "python"), "-c", "pass"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 127
    assert "make install" in result.stderr and str(tmp_path / ".venv") in result.stderr


@pytest.mark.parametrize("profile", ["cpu", "smoke", "paper"])
def test_every_profile_loads(profile):
    params = load_params(overrides=[f"profile={profile}"])
    assert params.profile == profile
    assert params.envs and all(env in params.data for env in params.envs)


def test_smoke_profile_is_small_and_exercises_planning_checks():
    smoke = load_params(overrides=["profile=smoke"])
    cpu = load_params()
    assert smoke.train.max_steps < 100 and smoke.data["pusht"].episodes < cpu.data["pusht"].episodes
    assert smoke.train.plan_eval_every > 0  # the chain also runs planning checks during training
    assert smoke.model == cpu.model  # the real CPU-profile architecture, only less of everything else


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'laptop' \\(known: cpu, smoke, paper\\)"):
        load_params(overrides=["profile=laptop"])


def test_env_overrides_apply_to_their_world_only_and_each_layer_refines_the_one_before(tmp_path):
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["env_overrides"]["pusht"] = {"train": {"max_steps": 11}}
    raw["profiles"]["paper"]["env_overrides"] = {"pusht": {"train": {"max_steps": 13}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_params(path, env="pusht").train.max_steps == 11  # the world's CPU-profile value
    assert load_params(path).train.max_steps == raw["train"]["max_steps"]  # no world: the general value
    assert load_params(path, ["profile=smoke"], env="pusht").train.max_steps == 30  # the profile beats it
    assert load_params(path, ["profile=paper"], env="pusht").train.max_steps == 13  # the profile's entry
    assert load_params(path, ["train.max_steps=9"], env="pusht").train.max_steps == 9  # --set beats all
    overlay = "env_overrides.pusht.train.max_steps=7"
    assert load_params(path, [overlay, "train.max_steps=9"], env="pusht").train.max_steps == 7


@pytest.mark.parametrize(("override", "message"), [
    ("envs=[pusht, other]", r"env_overrides\.other: missing; every world in `envs` has an entry"),
    ("env_overrides.pusht.envs=[pusht]", r"env_overrides\.pusht\.envs: cannot be set per world"),
    ("env_overrides.pusht.train.max_stepz=3", r"train\.max_stepz: unknown parameter"),
])
def test_bad_env_overrides_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=[override], env="pusht")


def test_setup_and_ci_scripts_are_executable_shell():
    for script in ("scripts/setup.sh", "scripts/smoke.sh", ".ci/run"):
        subprocess.run(["bash", "-n", str(PROJECT_ROOT / script)], check=True, timeout=30)
    assert os.access(LAUNCHER, os.X_OK)
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make smoke" in ci
