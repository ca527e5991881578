"""Run-time choices: device names, precision (`auto` → bf16 only where the hardware computes it natively),
and that both training and planning honour `train.precision` / `plan.precision`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lewm.checkpoint import model_meta
from lewm.config import ConfigError, load_params
from lewm.data.clips import ActionStats
from lewm.models import goal_distance_cost
from lewm.planning import LatentMPCAgent
from lewm.runtime import autocast, native_bf16, resolve_device, resolve_precision
from lewm.train import train

CPU = torch.device("cpu")


def test_explicit_precisions_are_kept_and_unknown_ones_rejected() -> None:
    assert resolve_precision(CPU, "fp32") == "fp32"
    assert resolve_precision(CPU, "bf16") == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision(CPU, "fp16")


def test_auto_precision_follows_native_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision(CPU, "auto") == ("bf16" if native_bf16(CPU) else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not native_bf16(CPU)
    assert resolve_precision(CPU, "auto") == "fp32"  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision(CPU, "auto") == "fp32"  # AVX512-BF16 without AMX measured no faster
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision(CPU, "auto") == "bf16"


def test_autocast_runs_matmuls_in_bf16_only_when_asked() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32


def test_cuda_device_without_index_is_this_process_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
        return
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda") == torch.device("cuda", 0)


@pytest.mark.parametrize("key", ["train.precision", "plan.precision"])
def test_config_rejects_an_unknown_precision_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(overrides=[f"{key}=fp16"])


def test_planning_costs_stay_fp32_under_bf16_autocast(tiny_model: list[str]) -> None:
    params = load_params(overrides=tiny_model)
    meta = model_meta("pusht", params.model.name, params.model.settings, 32, 2, 5, 3,
                      ActionStats(np.zeros(2), np.ones(2)))
    torch.manual_seed(0)
    model = meta.build().eval()
    for block in model.predictor.blocks:  # AdaLN-zero starts as the identity: make actions matter
        torch.nn.init.normal_(block.modulation[1].weight, std=0.2)
    z_now, z_goal = torch.randn(1, 16), torch.randn(1, 16)
    candidates = torch.randn(20, 5, 10)
    reference = goal_distance_cost(model, z_now, z_goal)(candidates)
    with autocast(CPU, "bf16"):
        costs = goal_distance_cost(model, z_now, z_goal)(candidates)
    assert costs.dtype == torch.float32 and costs.shape == (20,)
    # bf16 rounding only (8 mantissa bits, relative step 2^-8): costs agree to within a few steps. Whether
    # that rounding changes which plans CEM keeps is measured end to end (plan stage at both precisions).
    torch.testing.assert_close(costs, reference, rtol=4 * 2**-8, atol=0.0)

    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for precision in ("fp32", "bf16"):
        agent = LatentMPCAgent(model, meta, dataclasses.replace(params.plan, precision=precision), seed=0)
        agent.start({"pixels": frames[0]})
        actions = agent.act({"pixels": frames[1]})
        assert actions.shape == (params.plan.receding * 5, 2) and np.isfinite(actions).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_records_the_precision_it_ran_at(tiny_model: list[str], tiny_pusht: Path, tmp_path: Path,
                                                   precision: str) -> None:
    params = load_params(overrides=[*tiny_model, "train.max_steps=2", "train.val_every=2",
                                    f"train.precision={precision}"])
    outcome = train(params, "pusht", tiny_pusht, tmp_path, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["bf16"] == (1.0 if precision == "bf16" else 0.0) == outcome.metrics["bf16"]
    assert np.isfinite(metrics["val_pred_loss"])
