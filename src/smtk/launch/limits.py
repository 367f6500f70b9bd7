"""The kernel's limits on a command line, checked before a plan is started.

``execve`` refuses (``E2BIG``) an argument or environment string longer than
``MAX_ARG_STRLEN`` (32 pages: 128 KiB) and a command line plus environment larger than
``ARG_MAX``. Hyperparameters reach both: each one is an argument and an ``SM_HP_*``
variable, and all of them together are ``SM_HPS`` and part of ``SM_TRAINING_ENV``. A
job whose hyperparameters are too big fails here with a :class:`ConfigError` naming the
biggest offender, instead of an ``OSError`` at launch.

::

    limits.check(plan, os.environ)     # raises ConfigError (exit status 2)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from smtk.errors import ConfigError
from smtk.launch.plan import LaunchPlan

#: Linux's ``MAX_ARG_STRLEN``: one argument or ``NAME=value`` string, with its NUL.
MAX_ARG_STRLEN = 32 * 4096
_POINTER = 8


def arg_max() -> int:
    """``ARG_MAX`` of this system (2 MiB when it cannot be read)."""
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        value = -1
    return value if value > 0 else 2 * 1024 * 1024


def check(plan: LaunchPlan, environ: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` when ``plan`` cannot be started with ``environ`` + ``plan.env``."""
    env = {**environ, **plan.env}
    total = 0
    biggest: tuple[int, str] = (0, "")
    for index, arg in enumerate(plan.argv):
        size = len(os.fsencode(arg)) + 1
        total += size + _POINTER
        if size > biggest[0]:
            biggest = (size, f"argument {index} of the command ({_start(arg)})")
    for name, value in env.items():
        size = len(os.fsencode(name)) + len(os.fsencode(value)) + 2
        total += size + _POINTER
        if size > biggest[0]:
            biggest = (size, f"the environment variable {name}")
    size, what = biggest
    if size > MAX_ARG_STRLEN:
        raise ConfigError(
            "the launch command",
            None,
            f"every argument and environment variable within the kernel's limit of {MAX_ARG_STRLEN} bytes",
            f"<{what}: {size} bytes>",
            hint=_HINT,
        )
    limit = arg_max()
    if total > limit:
        raise ConfigError(
            "the launch command",
            None,
            f"a command line and environment within the kernel's ARG_MAX of {limit} bytes",
            f"<{total} bytes; the largest is {what}, {size} bytes>",
            hint=_HINT,
        )


_HINT = (
    "each hyperparameter is passed as an argument and in SM_HP_*, SM_HPS and SM_TRAINING_ENV: "
    "pass large values in a file (a channel or the code dir) instead"
)


def _start(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
