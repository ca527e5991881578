"""Collapse evidence: train the same small LeWM for the same short budget with λ = 0 (prediction loss only)
and with the default λ, and compare the collapse diagnostics of their validation embeddings.

    python bench/bench_collapse.py [--data data/pusht] [--steps 150]

Without SIGReg nothing stops the encoder from mapping every frame to (nearly) the same point, which makes
the prediction loss trivially small: the effective rank and per-dimension std of λ = 0 embeddings fall far
below those of the regularised run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lewm.config import load_params
from lewm.train import train

SMALL_MODEL = [
    "model.name=lewm", "model.lewm.encoder_depth=2", "model.lewm.encoder_dim=64",
    "model.lewm.encoder_heads=4", "model.lewm.patch_size=16", "model.lewm.projector_hidden=512",
    "model.lewm.predictor_depth=2", "model.lewm.predictor_heads=4", "model.lewm.predictor_head_dim=32",
    "model.lewm.predictor_mlp_dim=512", "train.batch_size=32", "train.val_batches=4", "train.log_every=25",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/pusht", help="dataset directory (run the generate stage)")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"error: {args.data}: no dataset (run `python -m pipelines.generate --env pusht`)")
    default_lambda = load_params(overrides=SMALL_MODEL).model.settings.lambda_
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lam in (0.0, default_lambda):
            params = load_params(overrides=[
                *SMALL_MODEL, f"model.lewm.lambda={lam}", f"train.max_steps={args.steps}",
                f"train.val_every={args.steps}", f"train.checkpoint_every={args.steps}",
            ])
            started = time.perf_counter()
            outcome = train(params, "pusht", args.data, Path(tmp) / f"lambda{lam}", progress=False)
            rows.append((lam, outcome.metrics, time.perf_counter() - started))
    header = ("lambda", "val pred", "val SIGReg", "emb std", "eff. rank", "seconds")
    print(" ".join(f"{name:>10}" for name in header))
    for lam, m, seconds in rows:
        print(f"{lam:>10.3f} {m['val_pred_loss']:>10.5f} {m['val_sigreg_loss']:>10.3f} "
              f"{m['val_emb_std']:>10.4f} {m['val_effective_rank']:>10.2f} {seconds:>10.1f}")
    (_, collapsed, _), (_, regularised, _) = rows
    print(f"effective rank ratio λ=0 / λ={default_lambda}: "
          f"{collapsed['val_effective_rank'] / regularised['val_effective_rank']:.3f}; "
          f"embedding std ratio: {collapsed['val_emb_std'] / regularised['val_emb_std']:.3f}")


if __name__ == "__main__":
    main()
