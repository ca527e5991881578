"""Stage `manifest@<env>`: the start/goal pairs every method is evaluated on, drawn once.

    python -m pipelines.manifest --env pusht

Writes runs/<env>/manifests/test.parquet (held-out test episodes, for the reported success rates) and
runs/<env>/manifests/val.parquet (validation episodes, for model selection and the λ search), so no
number is ever measured on the episodes a model was trained on.
"""

from __future__ import annotations

from pathlib import Path

from lewm.config import load_params
from lewm.data.storage import EpisodeStore
from lewm.evaluation import build_manifest, write_manifest
from pipelines._cli import base_parser, run_cli


def manifest_stage(
    env: str, params_path: str | None = None, overrides: list[str] | None = None,
    data_dir: str | Path | None = None, out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Draw the test and val manifests from data/<env> into runs/<env>/manifests/."""
    params = load_params(params_path, overrides, env)
    store = EpisodeStore.open(data_dir or f"data/{env}")
    out_dir = Path(out_dir or f"runs/{env}/manifests")
    val_pairs = max(params.bisect.val_episodes, params.train.plan_eval_episodes)
    sizes = {"test": params.eval.episodes, "val": val_pairs}
    paths = {}
    for split, n in sizes.items():
        manifest = build_manifest(store, split=split, n=n, goal_offset=params.eval.goal_offset,
                                  seed=params.eval.seed)
        paths[split] = out_dir / f"{split}.parquet"
        write_manifest(manifest, paths[split])
    return paths


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<env>)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<env>/manifests)")
    args = parser.parse_args()
    paths = manifest_stage(args.env, args.params, args.overrides, args.data, args.out)
    print(" ".join(f"{split}: {path}" for split, path in paths.items()))


if __name__ == "__main__":
    run_cli(main)
