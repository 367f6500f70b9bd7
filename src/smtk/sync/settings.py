"""The ``SMTK_SYNC_*`` switches, read once from the job's environment.

Every variable is optional; docs/sync.md lists them with their defaults. A bad value
is a :class:`~smtk.errors.ConfigError` naming the variable, never a silent default.

::

    settings = SyncSettings.from_environ(env.environ)
    settings.workers, settings.intermediate, settings.checkpoints
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from smtk import settings

IntermediateMode = Literal["auto", "on", "off"]
WatchMode = Literal["auto", "inotify", "poll"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class SyncSettings:
    """How intermediate-output and checkpoint sync behave (see docs/sync.md)."""

    #: ``auto``: sync ``output/intermediate`` only when it did not exist at start (the
    #: reference's rule: an existing directory means the platform syncs it).
    intermediate: IntermediateMode = "auto"
    #: Sync ``checkpointconfig.json``'s ``LocalPath`` to its ``S3Uri`` (``smtk local`` turns it on).
    checkpoints: bool = False
    #: Concurrent uploads.
    workers: int = 8
    #: Wait after a file's close before uploading it (lets write-then-rename settle).
    debounce_seconds: float = 0.25
    #: How long a file's transient failures (connection refused, 5xx, throttling) are retried.
    retry_seconds: float = 900.0
    #: Longest wait between two retries of one file.
    retry_max_wait_seconds: float = 5.0
    #: ``auto``: inotify, falling back to scanning when watches run out; ``poll``: scan only.
    mode: WatchMode = "auto"
    #: Interval of the periodic scan in polling mode.
    poll_seconds: float = 2.0
    #: Files at least this large are uploaded in parts (multipart upload).
    multipart_threshold: int = 8 * 1024 * 1024
    #: Default bound of the final flush when the caller gives none.
    flush_seconds: float = 60.0
    #: Whether failed or abandoned uploads should fail the job.
    strict: bool = False
    #: Send small files with the lean signed PUT of :mod:`smtk.sync.fastput` (botocore otherwise).
    fast_put: bool = True

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SyncSettings:
        return cls(
            intermediate=settings.choice(environ, "SMTK_SYNC_INTERMEDIATE", ("auto", "on", "off"), "auto"),  # type: ignore[arg-type]
            checkpoints=settings.flag(environ, "SMTK_SYNC_CHECKPOINTS", default=False),
            workers=settings.integer(environ, "SMTK_SYNC_WORKERS", 8, minimum=1),
            debounce_seconds=settings.number(environ, "SMTK_SYNC_DEBOUNCE_MS", 250, minimum=0) / 1000.0,
            retry_seconds=settings.number(environ, "SMTK_SYNC_RETRY_SECONDS", 900, minimum=0),
            mode=settings.choice(environ, "SMTK_SYNC_MODE", ("auto", "inotify", "poll"), "auto"),  # type: ignore[arg-type]
            poll_seconds=settings.number(environ, "SMTK_SYNC_POLL_SECONDS", 2, minimum=0.05),
            multipart_threshold=int(
                settings.integer(environ, "SMTK_SYNC_MULTIPART_MB", 8, minimum=5) * 1024 * 1024
            ),
            flush_seconds=settings.number(environ, "SMTK_SYNC_FLUSH_SECONDS", 60, minimum=0),
            strict=settings.flag(environ, "SMTK_SYNC_STRICT", default=False),
            fast_put=settings.flag(environ, "SMTK_SYNC_FAST_PUT", default=True),
        )
