"""The ``gpumix`` command line (also installed as the kubectl plugin ``kubectl-gpumix``).

Each sub-command lives in ``gpumix/commands/<name>.py`` and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a
callable ``(argparse.Namespace) -> int`` returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("check", "plan", "webhook", "controller", "demo", "simulate")

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpumix",
        description="Keep heterogeneous-GPU model serving on Kubernetes safe and cheap.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gpumix.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gpumix.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_INPUT
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
