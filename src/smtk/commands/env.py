"""``smtk env``: print the job environment as smtk reads it.

::

    smtk env                      # a readable summary; secret-looking values masked
    smtk env --json               # dict(Environment()) as JSON (SM_TRAINING_ENV, indented)
    smtk env --export --reveal-secrets   # export SM_...=... lines, for: eval "$(smtk env ...)"
    smtk env --root ./job/opt/ml  # another tree than $SAGEMAKER_BASE_DIR or /opt/ml

Everything it prints goes through smtk's masking, like its logs: secret-looking values
show as ``****``. ``--reveal-secrets`` prints exact values (what the user's process
receives; a sourced ``--export`` needs them). A configuration error is one line on
stderr (``smtk env: <message>``) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from smtk import log
from smtk.environment import Environment
from smtk.errors import SmtkError
from smtk.redact import MASK, is_secret_name, redact_url, secret_values

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Everything printed is masked like smtk's logs: values whose names look secret "
        "(password, token, key, ...) and credentials in URLs show as ****."
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="the job tree to read (default: $SAGEMAKER_BASE_DIR, else /opt/ml)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print dict(Environment()) as JSON")
    output.add_argument(
        "--export",
        action="store_true",
        help="print sorted, shell-quoted 'export SM_...=...' lines to source",
    )
    parser.add_argument(
        "--reveal-secrets",
        action="store_true",
        help="print exact values, secrets included (what the training process receives; "
        "a sourced --export needs them)",
    )


def run(args: argparse.Namespace) -> int:

    reveal = bool(args.reveal_secrets)
    masker = log.masker()
    if args.root is not None and not os.path.isdir(args.root):
        log.write("stderr", f"smtk env: no job tree at {args.root}: not a directory")
        return 2
    try:
        env = Environment(root=args.root)
        masker.add(secret_values(env.raw_hyperparameters, env.environ))
        if args.json:
            data = dict(env) if reveal else masker.mask_tree(dict(env))
            text = json.dumps(data, indent=2, sort_keys=True)
        elif args.export:
            values = env.to_env_vars()
            text = render_export(values if reveal else masker.mask_mapping(values)).rstrip("\n")
        else:
            text = render_summary(env).rstrip("\n")
    except SmtkError as exc:
        log.write("stderr", f"smtk env: {_one_line(str(exc), limit=2000)}")
        return exc.exit_status
    log.write("stdout", text, reveal=reveal)
    return 0


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
