"""Issue-13 lever: would planning from several observed frames (the agent's velocity visible) imagine better?

    .venv/bin/python bench/context_frames.py --env pusht [--model runs/pusht/train/model.pt]
        [--data data/pusht] [--contexts 1 2 3] [--out runs/pusht/levers/context_frames]

Planning encodes one frame (the reference's `history_len = 1`). The trained predictor reads up to `history`
frames, so the observed frames 1 … C − 1 blocks before the start and the blocks executed between them
could be its context. This rolls the model out open loop from the SAME test starts (each with enough
earlier frames for the largest C) under the episodes' true action blocks, once per context size, and reads
the imagined latents with the imagine stage's linear probes (`lewm/imagination.py`): errors per horizon
step (plan.horizon) in world units, against the no-motion copy and the encoded true frame. If a larger
context does not lower the imagined errors, planning from more frames cannot plan better through them.

Writes <out>/context_frames.parquet (one row per context × step × quantity × reading) and
<out>/context_frames.json (the `<quantity>.<reading>.k<step>` means per context); prints the last step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from lewm.checkpoint import load_model
from lewm.config import load_params
from lewm.data.storage import EpisodeStore
from lewm.imagination import fit_readout, imagination_table, imagine, window_starts
from lewm.io import atomic_file, write_json
from lewm.models import check_context_frames


def measure(env: str, model_path: Path, data_dir: Path, contexts: list[int]) -> pd.DataFrame:
    """The imagination table (`imagination_table`) of every context size on the same starts, `context`
    column added."""
    params = load_params(None, [], env)
    loaded = load_model(model_path, "cpu")
    model, meta = loaded.model, loaded.meta  # in eval mode
    for context in contexts:
        check_context_frames(context, meta.history)
    store = EpisodeStore.open(data_dir)
    horizon, frameskip = params.plan.horizon, meta.frameskip
    readout = fit_readout(model, meta, store, params.probe, "cpu")
    lead = (max(contexts) - 1) * frameskip
    starts = window_starts(store, horizon * frameskip, params.imagine.starts, lead=lead)
    tables = []
    for context in contexts:
        imagined, encoded = imagine(model, meta, store, starts, horizon, "cpu", context_frames=context)
        table = imagination_table(readout, store, starts, imagined, encoded, frameskip)
        tables.append(table.assign(context=context))
    return pd.concat(tables, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="pusht")
    parser.add_argument("--model", type=Path, default=None, help="default: runs/<env>/train/model.pt")
    parser.add_argument("--data", type=Path, default=None, help="default: data/<env>")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=None, help="default: runs/<env>/levers/context_frames")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:
        table = measure(args.env, args.model or Path(f"runs/{args.env}/train/model.pt"),
                        args.data or Path(f"data/{args.env}"), sorted(set(args.contexts)))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    out = args.out or Path(f"runs/{args.env}/levers/context_frames")
    with atomic_file(out / "context_frames.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    summary = {f"context{c}": {f"{r.quantity}.{r.reading}.k{r.step}": r.mean_error
                               for r in group.itertuples(index=False)}
               for c, group in table.groupby("context")}
    summary["starts"] = int(table["n"].iloc[0])
    write_json(out / "context_frames.json", summary)
    last = table[table["step"] == table["step"].max()]
    print(last.pivot_table(index=["quantity", "reading"], columns="context", values="mean_error").round(3))


if __name__ == "__main__":
    main()
