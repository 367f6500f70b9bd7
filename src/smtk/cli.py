"""Console entry points: ``train`` (what the platform runs) and ``smtk`` (tools).

The ``smtk`` front end imports only the module of the subcommand asked for, so
``smtk env`` never pays for what ``smtk local`` needs. Each subcommand lives in
``smtk.commands.<name>`` and provides ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from smtk import __version__

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "env": ("smtk.commands.env", "print the job environment as smtk reads it"),
    "plan": ("smtk.commands.plan", "print the launch plan for this host without running it"),
    "local": ("smtk.commands.local", "run a training job on this machine (processes or a container)"),
    "pipe-feed": ("smtk.commands.pipe_feed", "feed Pipe-mode FIFOs from a directory or S3 prefix"),
}


def _usage() -> str:
    lines = [
        "usage: smtk <command> [options]",
        "",
        "Run and inspect SageMaker-style training jobs.",
        "",
        "commands:",
    ]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", "Run 'smtk <command> --help' for a command's options.", "'train' runs the job in /opt/ml."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``smtk <command> ...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"smtk {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"smtk: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"smtk {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    namespace = parser.parse_args(args[1:])
    result: int = module.run(namespace)
    return result


def train_main(argv: Sequence[str] | None = None) -> int:
    """``train``: run the job described by ``/opt/ml`` (or ``$SAGEMAKER_BASE_DIR``)."""
    from smtk.train import main as run_train

    return run_train(list(sys.argv[1:] if argv is None else argv))


def smtk_console() -> None:
    """Console script ``smtk``."""
    sys.exit(main())


def train_console() -> None:
    """Console script ``train``."""
    sys.exit(train_main())
