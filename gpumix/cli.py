"""The ``gpumix`` command line (also installed as the kubectl plugin ``kubectl-gpumix``).

Each sub-command lives in ``gpumix/commands/<name>.py`` and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a
callable ``(argparse.Namespace) -> int`` returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

COMMANDS = {
    "check": "check manifest files offline against the admission rules",
    "plan": "cheapest GPU mix for a load, from profiles and prices (offline)",
    "webhook": "run the admission webhook (HTTPS /mutate and /validate)",
    "controller": "run the GPUMix scaling controller and the cluster audit",
    "demo": "run the whole system on an in-process Kubernetes API emulator",
    "simulate": "simulate a cluster, the optimizer-driven controller and autoscalers",
}
"""Each command and its one-line help (the help its module's parser repeats)."""

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INPUT = 2

EXTRAS = {"ortools": "controller", "numpy": "controller", "matplotlib": "demo", "rich": "demo"}
"""The optional packages and the extra that installs each (pyproject.toml)."""

NOT_IN_RUNTIME_IMAGES = ("gpumix.demo", "gpumix.simulate", "gpumix.emulator")
"""The parts of the package the webhook and controller images do not install
(docs/architecture.md, "Packaging"; the Dockerfile's ``wheel-runtime`` stage)."""

PART_OF = {"demo": "gpumix.demo", "simulate": "gpumix.simulate"}
"""The commands that need one of those parts, checked before the command is loaded."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command's options, or, given ``command``, with only that
    command's (``""``: none); the others are listed by name and help. A command's
    module (and what it imports: OR-Tools for ``plan``, matplotlib for ``simulate``) is
    imported only when it is the one that runs, so ``gpumix webhook`` needs neither."""
    parser = argparse.ArgumentParser(
        prog="gpumix",
        description="Keep heterogeneous-GPU model serving on Kubernetes safe and cheap.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=summary)
            continue
        part = PART_OF.get(name)
        if part is not None and importlib.util.find_spec(part) is None:
            raise ModuleNotFoundError(f"No module named {part!r}", name=part)
        module = importlib.import_module(f"gpumix.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    try:
        parser = build_parser(command if command in COMMANDS else "")
        args = parser.parse_args(words)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return EXIT_INPUT
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except ModuleNotFoundError as exc:
        if exc.name in NOT_IN_RUNTIME_IMAGES:
            print(
                f"gpumix {command}: {exc.name} is not installed in this image (the webhook "
                "and controller images leave out the demo, the simulator and the API "
                "emulator): use the image ghcr.io/gpumix/gpumix or pip install 'gpumix[demo]'",
                file=sys.stderr,
            )
            return EXIT_INPUT
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS:
            raise
        extra = EXTRAS[missing]
        print(
            f"gpumix {command}: needs {missing}, which the '{extra}' extra installs: "
            f"pip install 'gpumix[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
