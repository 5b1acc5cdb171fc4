"""The ``glowplug`` command: ``operator``, ``activator`` and ``simulate``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from glowplug import __version__

# Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; they
# are imported lazily so ``glowplug --help`` does not pay for kopf or aiohttp.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("glowplug.operator.main", "run the EmbeddingService operator (kopf)"),
    "activator": ("glowplug.activator.main", "run the OpenAI-compatible activating proxy"),
    "simulate": ("glowplug.operator.simulate", "replay a request trace through the autoscaler"),
}


def main(argv: Sequence[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="glowplug", description=__doc__)
    parser.add_argument("--version", action="version", version=f"glowplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    runners: dict[str, Callable[[argparse.Namespace], int]] = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sp)
        runners[name] = module.run
    args = parser.parse_args(argv)
    return runners[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
