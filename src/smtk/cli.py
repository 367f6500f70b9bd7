"""Console entry points: ``train`` (what the platform runs) and ``smtk`` (tools).

Both install the job's :class:`~smtk.stop.Stop` as their very first instruction, before
any other smtk module is imported, so a SIGTERM that arrives while ``train`` is still
starting is recorded (and ends the job as stopped) instead of killing it with no
failure file. The ``smtk`` front end imports only the module of the subcommand asked
for, so ``smtk env`` never pays for what ``smtk local`` needs. Each subcommand lives in
``smtk.commands.<name>`` and provides ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import sys

from smtk.stop import Stop

# Not typing.TYPE_CHECKING, nor a runtime import of collections.abc: every module imported
# here runs before the stop handler is installed (see smtk.stop).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None, stop: Stop | None = None) -> int:
    """``smtk <command> ...``; returns the exit status."""
    import argparse  # the dispatcher's own needs: imported after the stop is installed
    import importlib

    from smtk import __version__, log

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        log.write("stdout" if args else "stderr", _usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        log.write("stdout", f"smtk {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        log.write("stderr", f"smtk: unknown command {name!r}{hint}\n\n{_usage()}")
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"smtk {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    namespace = parser.parse_args(args[1:])
    namespace.stop = stop or Stop()
    result: int = module.run(namespace)
    return result


def train_main(argv: Sequence[str] | None = None, stop: Stop | None = None) -> int:
    """``train``: run the job described by ``/opt/ml`` (or ``$SAGEMAKER_BASE_DIR``); under Slurm
    or Kubernetes, the spec named by ``SMTK_JOB_SPEC`` (smtk.scheduler, docs/outside-sagemaker.md)."""
    import os

    from smtk.scheduler.platform import on_sagemaker

    args = list(sys.argv[1:] if argv is None else argv)
    if all(a == "train" for a in args) and not on_sagemaker(os.environ):
        from smtk.scheduler.bootstrap import run_scheduled

        return run_scheduled(args, stop or Stop().install())
    from smtk.train import main as run_train

    return run_train(args, stop)


def _exit(status: int) -> None:
    """Exit with ``status`` even when our own stdout or stderr is a closed pipe.

    Python flushes both at exit and turns a failure there into exit status 120; the
    job's status must win, so a stream that cannot be flushed is pointed at /dev/null.
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
    sys.exit(status)


def smtk_console() -> None:
    """Console script ``smtk``."""
    stop = Stop().install()
    _exit(main(stop=stop))


def train_console() -> None:
    """Console script ``train``."""
    stop = Stop().install()
    _exit(train_main(stop=stop))
