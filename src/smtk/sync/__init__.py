"""Live sync of intermediate output and checkpoints to S3 while training runs.

``train`` starts it beside the user process and stops it afterwards::

    from smtk.sync import restore_checkpoints, start_sync

    restored = restore_checkpoints(env)     # before user code; None when not applicable
    handle = start_sync(env)                # None when there is nothing to sync
    try:
        ...                                 # run the user code
    finally:
        if handle is not None:
            report = handle.stop(timeout=30)   # bounded final flush, never hangs
            log.info(report.summary())
            failed_job = report.fails_job      # only with SMTK_SYNC_STRICT=1

Modules: :mod:`~smtk.sync.watcher` (inotify and scans), :mod:`~smtk.sync.uploader`
(queue, threads, retries, multipart), :mod:`~smtk.sync.checkpoints` (restore),
:mod:`~smtk.sync.service` (start/stop); the ``SMTK_SYNC_*`` settings are
:class:`~smtk.settings.SyncSettings`.
Importing this package imports neither boto3 nor inotify_simple.
"""

from __future__ import annotations

from smtk.settings import SyncSettings
from smtk.sync.checkpoints import restore_checkpoints
from smtk.sync.results import RestoreReport, SyncReport, TargetCounts
from smtk.sync.service import SyncHandle, start_sync

__all__ = [
    "RestoreReport",
    "SyncHandle",
    "SyncReport",
    "SyncSettings",
    "TargetCounts",
    "restore_checkpoints",
    "start_sync",
]
