"""Shared command-line plumbing for the stage entry points: one clear error line instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from lewm.config import ConfigError


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors (unknown option, missing argument) are one line `error: ...`
    and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every stage shares: params file and `key=value` overrides."""
    parser = Parser(description=description)
    parser.add_argument("--params", default=None, help="parameter file (default: params.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a parameter, e.g. --set model.lewm.lambda=0.1 (repeatable)",
    )
    return parser


def run_cli(main: Callable[[], None]) -> None:
    """Run `main`; turn expected user errors into `error: <message>` and exit status 2."""
    try:
        main()
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
