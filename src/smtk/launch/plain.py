"""The plain launcher: the entry point as one process on this host (the reference's default)."""

from __future__ import annotations

import sys

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.launch.childenv import child_env
from smtk.launch.plan import LaunchPlan


def entry_argv(entry: EntryPoint, python: str = sys.executable) -> list[str]:
    """The command that starts ``entry``, without the user's arguments."""
    if entry.kind == "python":
        return [python, entry.name]
    if entry.kind == "package":
        return [python, "-m", entry.module or entry.name.removesuffix(".py")]
    if entry.kind == "function":
        return [python, "-m", "smtk.launch.call", f"{entry.module}:{entry.function}"]
    # shell: honour the script's own #! line; without one, run it with /bin/sh
    return [f"./{entry.name}"] if entry.has_shebang else ["/bin/sh", entry.name]


def build_plan(env: Environment, entry: EntryPoint, python: str = sys.executable) -> LaunchPlan:
    """Run ``entry`` once, with the hyperparameters as argv (none for a function)."""
    args = [] if entry.kind == "function" else env.to_cmd_args()
    return LaunchPlan(
        kind="function" if entry.kind == "function" else "process",
        argv=(*entry_argv(entry, python), *args),
        env=child_env(env, "process"),
        cwd=entry.code_dir,
        hosts=(env.current_host,),
        processes_per_host=1,
        log_prefix="",
        notes=(f"plain process: {entry.kind} entry point {entry.name!r}",),
    )
