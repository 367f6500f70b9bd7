"""Reading smtk's ``SMTK_*`` settings from an environment, with one error style.

Every setting is optional: unset or blank means the default. A value that cannot be
used is a :class:`~smtk.errors.ConfigError` naming the variable, what was expected and
what was found, e.g. ``SMTK_GRACE_PERIOD: expected a number >= 0, found 'soon'``.

::

    from smtk import settings
    grace = settings.number(os.environ, "SMTK_GRACE_PERIOD", 100.0)
    workers = settings.integer(os.environ, "SMTK_SYNC_WORKERS", 8, minimum=1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from smtk.errors import ConfigError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return None if value is None or not value.strip() else value


def number(environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    """A finite number ``>= minimum`` (seconds, sizes, ...)."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(name, None, f"a number >= {minimum:g}", raw)
    return value


def integer(environ: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    """A whole number ``>= minimum``."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, None, f"an integer >= {minimum}", raw) from None
    if value < minimum:
        raise ConfigError(name, None, f"an integer >= {minimum}", raw)
    return value


def flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(name, None, "1/true/yes/on or 0/false/no/off", raw)


def choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (compared in lower case)."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text not in choices:
        raise ConfigError(name, None, " or ".join(repr(c) for c in choices), raw)
    return text
