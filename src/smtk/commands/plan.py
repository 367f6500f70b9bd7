"""``smtk plan``: print what ``train`` would run on this host, without running it.

::

    smtk plan                       # launcher, hosts, command, cwd, peers waited for
    smtk plan --root ./job/algo-2   # another tree than $SAGEMAKER_BASE_DIR or /opt/ml
    smtk plan --json                # the LaunchPlan as JSON (env values of secrets masked)

The entry point must already be in the code dir (``smtk plan`` fetches nothing). A
configuration or entry point error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any

from smtk import entry_point, log
from smtk.cluster import readiness
from smtk.environment import Environment
from smtk.errors import SmtkError
from smtk.launch import select
from smtk.paths import Paths
from smtk.redact import MASK, is_secret_name, secret_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", metavar="DIR", help="the job tree (default: $SAGEMAKER_BASE_DIR, else /opt/ml)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:

    masker = log.masker()
    root = Paths.at(args.root) if args.root is not None else Paths.from_environ()
    if not os.path.isdir(root.root):
        how = (
            ""
            if args.root is not None
            else "; name one with --root DIR (smtk local lays out <job-dir>/algo-N)"
        )
        log.write("stderr", f"smtk plan: no job tree at {root.root}{how}")
        return 2
    try:
        env = Environment(root=args.root)
        masker.add(secret_values(env.raw_hyperparameters, env.environ))
        entry = entry_point.resolve(env)
        plan = select.build_plan(env, entry)
        peers = readiness.peers_for(env, plan) if len(plan.hosts) > 1 else []
    except SmtkError as exc:
        log.write("stderr", f"smtk plan: {exc}")
        return exc.exit_status
    argv = masker.mask_argv(plan.argv)
    masked = {k: (MASK if is_secret_name(k) else v) for k, v in sorted(plan.env.items())}
    if args.json:
        data: dict[str, Any] = asdict(plan)
        data.update(argv=list(argv), env=masked, hosts=list(plan.hosts), notes=list(plan.notes))
        data["host"] = env.current_host
        data["waits_for"] = [asdict(p) for p in peers]
        log.write("stdout", json.dumps(data, indent=2, sort_keys=True))
        return 0
    lines = [
        f"host:       {env.current_host} ({'master' if env.is_master else 'not master'})",
        f"launcher:   {plan.kind}",
        f"hosts:      {', '.join(plan.hosts)} ({plan.processes_per_host} process(es) per host)",
        f"command:    {plan.display(masker.mask_argv) if argv else '(none: waits for the MPI master)'}",
        f"cwd:        {plan.cwd}",
        "waits for:  "
        + (", ".join(f"{p.host}:{p.port} ({p.service})" if p.port else p.host for p in peers) or "nobody"),
    ]
    lines += [f"note:       {note}" for note in plan.notes]
    smtk_vars = [f"{k}={v}" for k, v in masked.items() if k.startswith("SMTK_")]
    if smtk_vars:
        lines.append("smtk vars:  " + " ".join(smtk_vars))
    log.write("stdout", "\n".join(lines))
    return 0
