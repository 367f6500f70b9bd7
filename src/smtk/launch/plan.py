"""``LaunchPlan``: what will run on this host, as a pure, comparable value.

Plan builders (plain process, torchrun, MPI) turn an :class:`~smtk.environment.Environment`
into a ``LaunchPlan``; :mod:`smtk.supervisor` is the only code that starts it.
Because plans are frozen dataclasses, launchers are tested by comparing plans and
``smtk plan`` prints one without running anything.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

LauncherKind = Literal["process", "torchrun", "mpi", "mpi-worker", "function"]


@dataclass(frozen=True)
class Companion:
    """A server that runs beside the plan's command on this host (a TensorFlow parameter
    server): started first, supervised with it (:mod:`smtk.launch.servers`), stopped after it."""

    name: str
    argv: tuple[str, ...]
    #: Variables added to (or overriding) the inherited environment.
    env: Mapping[str, str] = field(default_factory=dict)
    log_prefix: str = ""
    #: ``(address, port)``: once the command has ended, keep serving until nothing accepts
    #: connections there any more (the master's worker); ``None``: stop with the command.
    until_closed: tuple[str, int] | None = None


@dataclass(frozen=True)
class LaunchPlan:
    """One command to run on this host, and how."""

    #: Which launcher produced the plan.
    kind: LauncherKind
    #: The command, never run through a shell.
    argv: tuple[str, ...]
    #: Variables added to (or overriding) the inherited environment of the child.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Working directory of the child.
    cwd: str = "."
    #: Hosts taking part in this launch (this host alone for a plain process).
    hosts: tuple[str, ...] = ()
    #: Processes started per host (1 for a plain process).
    processes_per_host: int = 1
    #: Prefix of every output line of the command (``host:rank `` for a rank), or none.
    log_prefix: str = ""
    #: Human-readable notes for ``smtk plan`` (why this launcher, what was waited for).
    notes: tuple[str, ...] = ()
    #: Servers started before the command and stopped after it (see :class:`Companion`).
    companions: tuple[Companion, ...] = ()

    def display(self, mask: Callable[[Sequence[str]], Sequence[str]] | None = None) -> str:
        """The command as a shell-quoted string, for display only; ``mask`` hides secrets
        (:meth:`smtk.redact.Masker.mask_argv`)."""
        return shlex.join(mask(self.argv) if mask is not None else self.argv)
