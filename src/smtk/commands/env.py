"""``smtk env``: print the job environment as smtk reads it.

::

    smtk env                      # a readable summary; secret-looking values masked
    smtk env --json               # dict(Environment()) as JSON (SM_TRAINING_ENV, indented)
    smtk env --export             # export SM_...=... lines, for: eval "$(smtk env --export)"
    smtk env --root ./job/opt/ml  # another tree than $SAGEMAKER_BASE_DIR or /opt/ml

``--json`` and ``--export`` print exact values, secrets included: they are what the
user's process receives, and a sourced ``--export`` needs the real values. A
configuration error is one line on stderr (``smtk env: <message>``) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from smtk.errors import SmtkError

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "The summary masks values whose names look secret (password, token, key, ...). "
        "--json and --export print exact values, secrets included, because they are what "
        "the training process receives and sourcing needs the real values."
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="the job tree to read (default: $SAGEMAKER_BASE_DIR, else /opt/ml)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print dict(Environment()) as JSON (not redacted)"
    )
    output.add_argument(
        "--export",
        action="store_true",
        help="print sorted, shell-quoted 'export SM_...=...' lines to source (not redacted)",
    )


def run(args: argparse.Namespace) -> int:
    from smtk.environment import Environment

    try:
        env = Environment(root=args.root)
        if args.json:
            text = json.dumps(dict(env), indent=2, sort_keys=True) + "\n"
        elif args.export:
            text = render_export(env.to_env_vars())
        else:
            text = render_summary(env)
    except SmtkError as exc:
        print(f"smtk env: {_one_line(str(exc), limit=2000)}", file=sys.stderr)
        return exc.exit_status
    return _write(sys.stdout, text)


def render_export(env_vars: Mapping[str, str]) -> str:
    """``export NAME=value`` lines, sorted; names no shell can set become comments."""
    lines = []
    for name in sorted(env_vars):
        if _SHELL_NAME.fullmatch(name):
            lines.append(f"export {name}={shlex.quote(env_vars[name])}")
        else:
            # e.g. SM_HP_BATCH-SIZE: valid in an environment, not as a shell variable.
            lines.append(f"# not a shell variable name, skipped: {shlex.quote(name)}")
    return "".join(line + "\n" for line in lines)


def render_summary(env: Any) -> str:
    """A human-readable view of an :class:`~smtk.environment.Environment`."""
    from smtk.redact import MASK, is_secret_name, redact_url

    role = "master" if env.is_master else f"worker (master: {env.master_hostname})"
    hosts = env.hosts
    rows = [
        ("job", env.job_name_or_default or "-"),
        (
            "root",
            env.paths.root
            if os.path.isdir(env.paths.root)
            else f"{env.paths.root} (missing: defaults shown)",
        ),
        ("host", f"{env.current_host}, {role}"),
        ("hosts", f"{len(hosts)}: {', '.join(hosts)}"),
        ("instance", f"{env.current_instance_type} in group {env.current_instance_group}"),
        ("distribution", _distribution(env)),
        ("entry point", env.user_entry_point or "-"),
        ("module dir", redact_url(env.module_dir)),
        ("framework module", env.framework_module or "-"),
        ("argv format", env.argv_format),
        ("log level", str(env.log_level)),
        ("hardware", f"{env.num_gpus} GPU(s), {env.num_cpus} CPU(s), {env.num_neurons} Neuron core(s)"),
    ]
    out = [_table(rows), ""]

    out.append(f"channels ({len(env.channel_configs)})")
    if env.channel_configs:
        header = ("name", "mode", "distribution", "records", "content type", "path")
        table: list[tuple[str, ...]] = [header]
        for name, channel in sorted(env.channel_configs.items()):
            table.append(
                (
                    name,
                    channel.input_mode,
                    channel.distribution,
                    channel.record_wrapper,
                    channel.content_type or "-",
                    env.channel_input_dirs[name],
                )
            )
        out.append(_columns(table))
    out.append("")

    def shown(name: str, value: Any) -> str:
        if is_secret_name(name) and value not in (None, ""):
            return MASK
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return _one_line(redact_url(text))

    for title, values in (
        ("hyperparameters", env.hyperparameters),
        ("framework parameters", env.additional_framework_parameters),
    ):
        out.append(f"{title} ({len(values)})")
        if values:
            out.append(_table(sorted((name, shown(name, value)) for name, value in values.items()), indent=2))
        out.append("")
    return "\n".join(out)


def _distribution(env: Any) -> str:
    groups = env.distribution_instance_groups
    if not groups:
        return "off"
    taking_part = "this host takes part" if env.distribution_enabled else "this host does not take part"
    return f"groups {', '.join(map(str, groups))}; hosts {', '.join(env.distribution_hosts)}; {taking_part}"


def _table(rows: Iterable[tuple[str, str]], indent: int = 0) -> str:
    rows = list(rows)
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{' ' * indent}{name:<{width}}  {value}" for name, value in rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _write(stream: TextIO, text: str) -> int:
    """Write ``text`` as UTF-8 whatever the locale; a closed pipe (``| head``) is not an error."""
    try:
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            buffer.write(text.encode("utf-8", "surrogateescape"))
            buffer.flush()
        else:
            stream.write(text)
            stream.flush()
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0
