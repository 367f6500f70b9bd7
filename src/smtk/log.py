"""Everything smtk writes to its stdout and stderr, masked: the one choke point.

Two ways out, one mask::

    logger ("smtk", "smtk.sync", ...) ──> MaskingHandler ──┐
    write("stdout" | "stderr", text)  ─────────────────────┴──> masker().mask(text) ──> the stream

- The ``smtk`` logger prints ``smtk LEVEL message`` lines on stderr (with
  ``SMTK_LOG_FORMAT=json``, one JSON object per line instead: ``time`` (UTC, ISO 8601),
  ``level``, ``logger``, ``message``; the message is masked before it is encoded). Its level comes
  from ``SMTK_LOG_LEVEL`` (a name or number), else the job's
  ``sagemaker_container_log_level``, else INFO. Configuring touches only the ``smtk``
  logger, never the root logger, so user code keeps control of its own logging.
- :func:`write` is how everything else reaches the terminal: the lines of the user's
  processes (``smtk.supervisor`` sinks), ``smtk env``, ``smtk plan`` and ``smtk local``
  summaries.
- Both mask every line with the process's :class:`~smtk.redact.Masker`: from the start
  it masks what looks secret by itself (credentials in URLs, ``password=...``, token
  shapes); once the job is read, ``train`` adds the job's secret values
  (:func:`add_secrets`). The output files (``output/failure``, ``failure.json``) are
  masked with the same masker by :mod:`smtk.report`.
- A closed stdout or stderr (``train | head``, a vanished terminal) is never an
  error: the line is dropped and the job goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TextIO

from smtk.redact import Masker
from smtk.settings import log_format_setting, log_level_setting

LOGGER_NAME = "smtk"
logger = logging.getLogger(LOGGER_NAME)

_masker = Masker()


def masker() -> Masker:
    """The masker every line this process writes goes through."""
    return _masker


def add_secrets(values: Iterable[str]) -> None:
    """Mask ``values`` (the job's secret-named values) from now on, everywhere."""
    _masker.add(values)


def write(stream: str, text: str, *, reveal: bool = False) -> None:
    """Write ``text`` (one or more lines, newline added) to ``stream`` (``stdout``/``stderr``).

    ``reveal`` skips masking; only ``smtk env --reveal-secrets`` asks for it, when the
    user explicitly wants the exact values.
    """
    out = sys.stdout if stream == "stdout" else sys.stderr
    shown = text if reveal else _masker.mask(text)
    _put(out, shown + "\n")


def _put(out: TextIO | None, text: str) -> None:
    if out is None:
        return
    try:
        try:
            out.write(text)
        except UnicodeEncodeError:
            # Environment values may carry undecodable bytes (surrogate escapes): give the
            # bytes back as they were, whatever the locale's encoding.
            buffer = getattr(out, "buffer", None)
            if buffer is None:
                out.write(text.encode("ascii", "backslashreplace").decode("ascii"))
            else:
                out.flush()
                buffer.write(text.encode("utf-8", "surrogateescape"))
        out.flush()
    except (OSError, ValueError):
        pass  # our own stream is gone (closed pipe or terminal): keep going


class MaskingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``smtk LEVEL message`` on a stream, every record masked; a closed stream is ignored."""

    def format(self, record: logging.LogRecord) -> str:
        return _masker.mask(super().format(record))

    def handleError(self, record: logging.LogRecord) -> None:
        # A closed stderr must not print "--- Logging error ---" tracebacks (to where?).
        return


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the message masked first (a JSON-escaped secret would
    no longer look like the secret)."""

    def __init__(self, masker: Masker | None = None) -> None:
        super().__init__()
        self._mask = (masker or _masker).mask

    def format(self, record: logging.LogRecord) -> str:
        message = self._mask(record.getMessage())
        if record.exc_info:
            message += "\n" + self._mask(self.formatException(record.exc_info))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return json.dumps(
            {
                "time": f"{stamp}.{int(record.msecs):03d}Z",
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            },
            ensure_ascii=False,
        )


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
    """Send ``smtk`` log records to stderr as masked ``smtk LEVEL message`` lines (idempotent)."""
    env = os.environ if environ is None else environ
    chosen = parse_level(log_level_setting(env), level if level is not None else logging.INFO)
    logger.setLevel(chosen)
    if not any(isinstance(h, MaskingHandler) for h in logger.handlers):
        handler = MaskingHandler(sys.stderr)
        if log_format_setting(env) == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("smtk %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger
