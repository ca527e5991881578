"""bench/compute_curve.py: the trends recover known laws, targets a trend moves away from are unreachable,
and bad points are refused with one line."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "compute_curve.py"
spec = importlib.util.spec_from_file_location("compute_curve", SCRIPT)
compute_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compute_curve)


def point(steps: int, reference: float, block: float, error_vs_zero: float, probe_r: float,
          seconds_per_step: float = 1.0) -> dict[str, float]:
    return {
        "steps": steps, "train.train_seconds": steps * seconds_per_step,
        "plan.lewm.reference.n": 50, "plan.lewm.reference.success_rate": reference,
        "plan.lewm.block.n": 42, "plan.lewm.block.success_rate": block,
        "plan.lewm.final_block_pos_error_vs_zero": error_vs_zero,
        **{f"probe.trained.linear.{q}.r": probe_r for q in compute_curve.PROBE_TARGETS},
    }


def test_fits_recover_the_steps_of_exact_trends():
    steps = np.array([1000, 3000, 10_000])
    decades = np.log10(steps / 1000)
    # logit(reference) rises 1 per decade from logit 0.1 at 1,000 steps: 50% at 10^(logit(0.1)·−1) × 1,000
    reference = 1 / (1 + np.exp(-(math.log(0.1 / 0.9) + decades)))
    error = 1.0 - 0.2 * decades  # 0.5 at 10^2.5 × 1,000 steps
    probe = 1 - 0.1 * 10 ** (-decades)  # 1 − r shrinks ×10 per decade: 0.97 at 10^(log10(10/3)) × 1,000
    points = pd.DataFrame([point(s, r, 0.3, e, p, seconds_per_step=spp)
                           for s, r, e, p, spp in zip(steps, reference, error, probe, (2.0, 1.0, 3.0),
                                                      strict=True)])
    fits = compute_curve.fit_curve(points)
    assert fits["success.reference"]["steps"] == pytest.approx(1000 * 10 ** math.log(9), rel=1e-6)
    assert fits["final_block_pos_error_vs_zero"]["steps"] == pytest.approx(1000 * 10**2.5, rel=1e-6)
    assert fits["probe.block_xy"]["steps"] == pytest.approx(1000 * 10 / 3, rel=1e-6)
    assert math.isinf(fits["success.block"]["steps"])  # a flat trend never reaches 70%
    # hours at the fastest measured rate (1 s per step), not the last point's
    assert fits["probe.block_xy"]["train_hours_at_measured_rate"] == pytest.approx(1000 * 10 / 3 / 3600)


def test_script_writes_the_curve_and_refuses_bad_points(tmp_path):
    for steps, rate in ((1000, 0.02), (3000, 0.16)):
        for stage, metrics in (("train", {"train_seconds": steps}), ("probe", {}), ("plan", {})):
            (tmp_path / str(steps) / stage).mkdir(parents=True)
            values = {k.split(".", 1)[1]: v for k, v in point(steps, rate, rate, 1.0, 0.9).items()
                      if k.startswith(f"{stage}.")}
            (tmp_path / str(steps) / stage / "metrics.json").write_text(json.dumps({**values, **metrics}))
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")]
    points = [a for s in (1000, 3000) for a in ("--point", f"{s}={tmp_path / str(s)}")]
    done = subprocess.run([*command, *points], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    curve = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert [p["steps"] for p in curve["points"]] == [1000, 3000]
    assert curve["fits"]["final_block_pos_error_vs_zero"]["steps"] is None  # flat: null, not Infinity
    bad = subprocess.run([*command, "--point", "ten=x", "--point", f"3000={tmp_path / '3000'}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --point 'ten=x'")
