"""Starting and stopping the sync that runs beside the user's process.

``train`` calls :func:`start_sync` just before it starts the user code and
:meth:`SyncHandle.stop` right after the code ends (success, failure or SIGTERM).
What is synced:

- ``output/intermediate`` -> ``<sagemaker_s3_output>/<job name>/output/intermediate``
  when the ``sagemaker_s3_output`` hyperparameter is an ``s3://`` URI and
  ``SMTK_SYNC_INTERMEDIATE`` allows it (``auto``: only when the directory did not
  exist when the job started -- the reference's sign that the platform syncs it).
- ``checkpointconfig.json``'s ``LocalPath`` -> its ``S3Uri`` when
  ``SMTK_SYNC_CHECKPOINTS=1`` (see :mod:`smtk.sync.checkpoints`).

Starting only creates threads and an inotify descriptor; boto3 is imported and the
S3 client built in a background thread, so that the first upload does not wait for
it. Stopping is bounded by its ``timeout``.

::

    handle = start_sync(env)          # None: nothing to sync
    try:
        rc = run_user_code()
    finally:
        if handle is not None:
            report = handle.stop(timeout=30)
            log.info(report.summary())
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from smtk.errors import SyncError
from smtk.s3 import parse_s3_uri
from smtk.settings import SyncSettings
from smtk.sync.checkpoints import checkpoint_source, client_environ, restored_signatures
from smtk.sync.results import SyncReport
from smtk.sync.uploader import Target, Uploader
from smtk.sync.watcher import TreeWatcher

if TYPE_CHECKING:
    from smtk.environment import Environment

log = logging.getLogger("smtk.sync")


class SyncHandle:
    """Running watchers and uploads; :meth:`stop` flushes and reports."""

    def __init__(self, targets: list[Target], settings: SyncSettings, uploader: Uploader) -> None:
        self.targets = targets
        self.settings = settings
        self._uploader = uploader
        self._watchers = [TreeWatcher(i, t, uploader, settings) for i, t in enumerate(targets)]
        self._lock = threading.Lock()
        self._report: SyncReport | None = None

    def _start(self) -> None:
        self._uploader.start()
        for watcher in self._watchers:
            watcher.start()

    @property
    def polling(self) -> bool:
        """Whether any tree is (also) being scanned periodically."""
        return any(w.polling for w in self._watchers)

    def stop(
        self, timeout: float | None = None, *, deadline: Callable[[float, float], float] | None = None
    ) -> SyncReport:
        """Flush what is pending within ``timeout`` seconds (default ``SMTK_SYNC_FLUSH_SECONDS``).

        ``deadline(started, budget)``, when given, is asked twice a second when the flush
        must end (``train`` brings it forward when a stop arrives during the flush).
        Never raises for upload problems and never waits past the deadline (plus the
        moment it takes to list a tree). Calling it again returns the same report.
        """
        with self._lock:
            if self._report is not None:
                return self._report
            budget = self.settings.flush_seconds if timeout is None else max(0.0, timeout)
            started = time.monotonic()

            def until() -> float:
                return deadline(started, budget) if deadline is not None else started + budget

            deadline_now = until()
            for watcher in self._watchers:
                try:
                    watcher.finish(deadline_now)
                except Exception:
                    log.exception("error while stopping the %s watcher", watcher.name)
            drained = self._uploader.flush(until)
            abandoned = set() if drained else self._uploader.outstanding()
            if drained:
                self._uploader.close()
            else:
                self._uploader.abort()
            counts = self._uploader.counts(abandoned)
            self._report = SyncReport(
                uploaded=sum(c.uploaded for c in counts),
                failed=sum(c.failed for c in counts),
                pending_abandoned=len(abandoned),
                seconds=time.monotonic() - started,
                errors=self._uploader.errors(),
                uploads=sum(c.uploads for c in counts),
                bytes=sum(c.bytes for c in counts),
                removed=sum(c.removed for c in counts),
                strict=self.settings.strict,
                timed_out=not drained,
                targets=tuple(counts),
            )
            if not drained:
                log.warning(
                    "S3 sync flush did not finish within %.1f s: %d files abandoned",
                    time.monotonic() - started,
                    len(abandoned),
                )
            return self._report


def sync_targets(env: Environment, settings: SyncSettings) -> list[Target]:
    """The trees this job should sync, creating their local directories."""
    targets: list[Target] = []
    s3_output = env.s3_output
    if s3_output and settings.intermediate != "off":
        root = env.output_intermediate_dir
        if s3_output.startswith("file://"):
            log.debug("sagemaker_s3_output is a local path; intermediate output is not synced")
        elif settings.intermediate == "auto" and os.path.exists(root):
            log.info(
                "%s existed before the job started, so the platform syncs it; not syncing it "
                "(SMTK_SYNC_INTERMEDIATE=on overrides)",
                root,
            )
        else:
            uri = parse_s3_uri(s3_output, "hyperparameters.json", "sagemaker_s3_output")
            dest = uri.join(env.job_name_or_default, "output", "intermediate")
            targets.append(
                Target("intermediate", _make_dir(root, "output/intermediate"), dest.bucket, dest.key)
            )
    source = checkpoint_source(env, settings)
    if source is not None:
        local, uri = source
        targets.append(
            Target(
                "checkpoints",
                _make_dir(local, "checkpointconfig.json LocalPath"),
                uri.bucket,
                uri.key.strip("/"),
            )
        )
    return targets


def _make_dir(path: str, what: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SyncError(f"cannot create {path} ({what}) for S3 sync: {exc.strerror}") from None
    return path


def start_sync(env: Environment) -> SyncHandle | None:
    """Start syncing this job's intermediate output and/or checkpoints; ``None`` if neither applies.

    Raises :class:`~smtk.errors.ConfigError` for a malformed URI or ``SMTK_SYNC_*``
    value and :class:`~smtk.errors.SyncError` when a directory cannot be created;
    upload failures never raise (they are in the report).
    """
    settings = env.settings.sync
    targets = sync_targets(env, settings)
    if not targets:
        return None
    environ = client_environ(env)
    uploader = Uploader(targets, settings, environ, env.settings.s3)
    for index, target in enumerate(targets):
        if target.name == "checkpoints":
            for rel, sig in restored_signatures(target.root).items():
                uploader.seed(index, rel, sig)
    handle = SyncHandle(targets, settings, uploader)
    handle._start()
    for target in targets:
        log.info("syncing %s to %s while training runs", target.root, target.destination)
    return handle
