"""The ``smtk`` logger: plain ``smtk LEVEL message`` lines on stderr.

The level comes from ``SMTK_LOG_LEVEL`` (a name or number), else the job's
``sagemaker_container_log_level``, else INFO. Configuring touches only the ``smtk``
logger, never the root logger, so user code keeps control of its own logging.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

LOGGER_NAME = "smtk"
logger = logging.getLogger(LOGGER_NAME)


def parse_level(value: str | int | None, default: int = logging.INFO) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    return level if isinstance(level, int) else default


def configure(level: int | None = None, environ: Mapping[str, str] | None = None) -> logging.Logger:
    """Send ``smtk`` log records to stderr as ``smtk LEVEL message`` (idempotent)."""
    env = os.environ if environ is None else environ
    chosen = parse_level(env.get("SMTK_LOG_LEVEL"), level if level is not None else logging.INFO)
    logger.setLevel(chosen)
    if not any(getattr(h, "_smtk", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("smtk %(levelname)s %(message)s"))
        handler._smtk = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    return logger
