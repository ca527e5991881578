"""The `lewm` command: every pipeline entry point as a subcommand, and a look at a dataset.

    lewm --help                                        # the commands
    lewm train --env pusht --set train.max_steps=10    # = python -m pipelines.train --env pusht ...
    lewm train --help                                  # the stage's own options
    lewm inspect --env pusht [--data DIR] [--json]     # dataset card: policy, counts, coverage, contact
    lewm preview --env pusht [--episodes 3] [--out FILE.gif]

A stage subcommand hands the rest of the command line, unchanged, to the stage module's own `main` (the
parser of `python -m pipelines.<stage>`), so each stage's options live in one place. Bad input is one line
`error: ...` and exit status 2 (`pipelines._cli.run_cli`). Stage modules are imported only when their
command runs, so `lewm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines._cli import Parser, run_cli

if TYPE_CHECKING:
    from lewm.data.storage import EpisodeStore
    from lewm.world import World

STAGES: dict[str, tuple[str, str]] = {
    "generate": ("pipelines.generate", "roll out the collection policy, write the dataset"),
    "manifest": ("pipelines.manifest", "draw the start/goal pairs of val and test episodes"),
    "train": ("pipelines.train", "train the world model on the dataset (MLflow-tracked)"),
    "decode": ("pipelines.decode", "pixel decoder on frozen embeddings: what the model imagines"),
    "plan": ("pipelines.plan", "planning success on the held-out test pairs, with floors"),
    "probe": ("pipelines.probe", "probe frozen embeddings onto physical state"),
    "imagine": ("pipelines.imagine", "open-loop imagination per step; latent vs true goal distance"),
    "voe": ("pipelines.voe", "violation-of-expectation surprise (colour, teleport)"),
    "compare": ("pipelines.compare", "compare world models and solvers on the same pairs"),
    "bisect": ("pipelines.bisect", "search the SIGReg weight λ by short trainings"),
    "full": ("pipelines.full", "the whole pipeline as one Prefect flow"),
    "serve": ("pipelines.serve", "serve the scheduled Prefect deployments"),
}
"""Subcommand → (the module whose `main` it runs, a one-line description)."""

DATASET_COMMANDS = {
    "inspect": "dataset card: policy, counts, pose coverage, contact",
    "preview": "GIF of the first episodes of a dataset",
}


def build_parser() -> argparse.ArgumentParser:
    """The `lewm` parser: stage commands (listed for help; their arguments are parsed by the stage) and
    the dataset commands."""
    parser = Parser(
        prog="lewm",
        description="LeWM world-model pipeline: the stages of dvc.yaml as commands, and a look at a dataset.",
        epilog="A stage command runs its module's command line unchanged: `lewm train ...` is\n"
               "`python -m pipelines.train ...`. `lewm <command> --help` shows its options. Examples:\n"
               "  lewm generate --env pusht --set data.pusht.episodes=10 --out /tmp/pusht\n"
               "  lewm inspect --env pusht\n"
               "  lewm preview --env pusht --episodes 2 --out pusht.gif",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name, (_, description) in STAGES.items():
        commands.add_parser(name, help=description, add_help=False)
    inspect = commands.add_parser("inspect", help=DATASET_COMMANDS["inspect"],
                                  description=f"The {DATASET_COMMANDS['inspect']} (lewm/data/card.py).")
    _dataset_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the card as JSON")
    preview = commands.add_parser("preview", help=DATASET_COMMANDS["preview"],
                                  description="Write a GIF of the first episodes of a dataset (every stored "
                                              "frame, captioned with episode, split and step).")
    _dataset_options(preview)
    preview.add_argument("--episodes", type=int, default=3, help="how many episodes, by id (default: 3)")
    preview.add_argument("--out", default=None, help="GIF path (default: runs/<env>/preview.gif)")
    preview.add_argument("--scale", type=int, default=None,
                         help="upscaling factor (default: frames about 256 px wide)")
    preview.add_argument("--fps", type=int, default=10, help="frames per second (default: 10)")
    return parser


def _dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="the world (lewm/envs/<name>)")
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<env>)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lewm` with `argv` (default: the process's arguments); returns the exit status (errors exit
    through `run_cli` with status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STAGES:
        run_stage(argv[0], argv[1:])
        return 0
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        parser.error("a command is required")
    if not argv[0].startswith("-") and argv[0] not in DATASET_COMMANDS:
        parser.error(f"unknown command {argv[0]!r} (known: {', '.join([*STAGES, *DATASET_COMMANDS])})")
    args = parser.parse_args(argv)
    run_cli(lambda: inspect_command(args) if args.command == "inspect" else preview_command(args))
    return 0


def run_stage(name: str, args: Sequence[str]) -> None:
    """Run stage `name`'s own `main` as `python -m <module> *args` would, its usage naming `lewm <name>`."""
    module = importlib.import_module(STAGES[name][0])
    saved = sys.argv
    sys.argv = [f"lewm {name}", *args]  # argparse takes its prog (usage line) from argv[0]
    try:
        run_cli(module.main)
    finally:
        sys.argv = saved


def _open(args: argparse.Namespace) -> tuple[World, EpisodeStore]:
    """The world named by --env and its dataset (--data or data/<env>), checked to belong together."""
    from lewm.data.storage import EpisodeStore
    from lewm.envs import get_world

    world = get_world(args.env)
    store = EpisodeStore.open(args.data or Path("data") / args.env)
    if store.manifest["env"] != args.env:
        raise ValueError(f"{store.path}: a {store.manifest['env']!r} dataset, not {args.env!r}")
    return world, store


def inspect_command(args: argparse.Namespace) -> None:
    """Print the dataset card, as text or JSON."""
    from lewm.data.card import dataset_card, format_card

    world, store = _open(args)
    card = dataset_card(store, world)
    print(json.dumps(card, indent=2) if args.json else format_card(card))


def preview_command(args: argparse.Namespace) -> None:
    """Write the GIF and print where it is."""
    from lewm.data.preview import write_preview

    _, store = _open(args)
    out = args.out or Path("runs") / args.env / "preview.gif"
    preview = write_preview(store, out, args.episodes, args.scale, args.fps)
    episodes = ", ".join(map(str, preview.episodes))
    print(f"wrote {preview.frames} frames of episodes {episodes} -> {preview.path}")


if __name__ == "__main__":
    sys.exit(main())
