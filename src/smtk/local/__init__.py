"""smtk local: run jobs on this machine (processes, several hosts, or a container image).

From Python: ``smtk.local.run("train.py", source_dir="src", ...)`` returns a
:class:`~smtk.local.runner.LocalResult` (see :mod:`smtk.local.api`). Nothing is imported
until it is asked for.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from smtk.local.api import run
    from smtk.local.runner import LocalResult

__all__ = ["LocalResult", "run"]

_LAZY = {"run": "smtk.local.api", "LocalResult": "smtk.local.runner"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smtk.local' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
