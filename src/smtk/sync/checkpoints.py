"""Checkpoints: restore ``LocalPath`` from ``S3Uri`` before the user code starts.

On SageMaker the platform itself copies checkpoints in both directions. Where it does
not (``smtk local``, other schedulers; switched on by ``SMTK_SYNC_CHECKPOINTS=1``),
smtk does: :func:`restore_checkpoints` downloads what a previous run (a spot
interruption, a retry) left under ``S3Uri``, and :func:`smtk.sync.start_sync` then
mirrors ``LocalPath`` to ``S3Uri`` while training runs, with the same machinery as
intermediate output.

Restore rules: every object under ``S3Uri/`` is written to ``LocalPath/<rest of key>``
unless a local file of the same size is already there (then it is assumed identical
and kept). Local files are never deleted. Keys that would escape ``LocalPath``
(``..`` parts) are refused. A restore that cannot list the prefix, or that fails for
any file, raises :class:`~smtk.errors.SyncError`: resuming from half a checkpoint is
worse than not starting.

::

    report = restore_checkpoints(env)   # None when not applicable
    if report:
        log.info(report.summary())
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from smtk.errors import SyncError
from smtk.progress import Progress
from smtk.s3 import S3Uri, parse_s3_uri
from smtk.s3.batch import ListingError, Wanted, download_many, list_objects, object_path, stoppable_policy
from smtk.s3.engine import Engine
from smtk.s3.retry import describe
from smtk.settings import SyncSettings
from smtk.stop import Stop
from smtk.sync.results import RestoreReport
from smtk.sync.uploader import Signature, signature

if TYPE_CHECKING:
    from smtk.environment import Environment

log = logging.getLogger("smtk.sync")

# Files restored in this process, by local root: the checkpoint sync that starts next
# must not upload them straight back.
_restored: dict[str, dict[str, Signature]] = {}
_restored_lock = threading.Lock()


def restored_signatures(root: str) -> dict[str, Signature]:
    """What :func:`restore_checkpoints` wrote (or found identical) under ``root``."""
    with _restored_lock:
        return dict(_restored.get(os.path.realpath(root), {}))


def checkpoint_source(env: Environment, settings: SyncSettings) -> tuple[str, S3Uri] | None:
    """``(LocalPath, S3Uri)`` when smtk should sync checkpoints itself, else ``None``."""
    config = env.checkpoint_config
    if not settings.checkpoints or config is None or not config.s3_uri:
        return None
    return config.local_path, parse_s3_uri(config.s3_uri, "checkpointconfig.json", "S3Uri")


def client_environ(env: Environment) -> dict[str, str]:
    """The job's environment, with the region filled in from ``sagemaker_region`` if needed."""
    environ = env.environ
    region = env.region
    if region and not any(environ.get(k) for k in ("AWS_REGION", "SAGEMAKER_REGION", "AWS_DEFAULT_REGION")):
        environ["AWS_REGION"] = region
    return environ


def restore_checkpoints(env: Environment, stop: Stop | None = None) -> RestoreReport | None:
    """Download the checkpoints of an earlier run into ``LocalPath`` (see module docs).

    ``None`` when checkpoint sync is off or there is no ``S3Uri``. A stop cancels the
    downloads in flight and returns at once (the caller's :meth:`~smtk.stop.Stop.call`
    has already returned).
    """
    settings = env.settings.sync
    source = checkpoint_source(env, settings)
    if source is None:
        return None
    local, uri = source
    try:
        os.makedirs(local, exist_ok=True)
    except OSError as exc:
        raise SyncError(
            f"cannot create the checkpoint directory {local}: {exc.strerror}",
            hint="check checkpointconfig.json LocalPath",
        ) from None

    s3 = env.settings.s3
    engine = Engine(
        client_environ(env),
        s3,
        threads=min(s3.concurrency, 32),
        multipart_threshold=settings.multipart_threshold,
    )
    policy = stoppable_policy(stop, settings.retry_seconds, settings.retry_max_wait_seconds)
    prefix = uri.key.rstrip("/") + "/" if uri.key.strip("/") else ""
    root = os.path.realpath(local)
    kept: dict[str, Signature] = {}
    refused: list[str] = []
    listed = 0

    def wanted() -> Iterator[Wanted]:
        nonlocal listed
        for key, size in list_objects(engine.client, uri.bucket, prefix, policy):
            listed += 1
            rel = key[len(prefix) :]
            if not rel or rel.endswith("/"):
                continue  # "directory" marker objects
            dest = object_path(root, "", rel)
            if dest is None:
                refused.append(
                    f"s3://{uri.bucket}/{key}: refused, the key does not map to a path inside {local}"
                )
                continue
            try:
                st = os.stat(dest)
            except OSError:
                pass
            else:
                if st.st_size == size:
                    kept["/".join(rel.split("/"))] = signature(st)
                    continue
            yield Wanted(key, dest, size)

    progress = Progress("checkpoints", log, interval=s3.progress_seconds)
    try:
        with progress:
            batch = download_many(
                engine,
                uri.bucket,
                wanted(),
                concurrency=s3.concurrency,
                policy=policy,
                progress=progress,
                stop=stop,
            )
    except ListingError as exc:
        raise SyncError(
            f"cannot list checkpoints at s3://{uri.bucket}/{prefix}: {describe(exc.cause)}",
            hint="check checkpointconfig.json S3Uri and the job's S3 permissions",
        ) from None
    finally:
        engine.close(cancel=True, wait=stop is None or not stop.requested)

    done: dict[str, Signature] = {}
    for item in batch.done:
        try:
            done[os.path.relpath(item.path, root).replace(os.sep, "/")] = signature(os.stat(item.path))
        except OSError:
            continue  # replaced or removed already: the sync will look at it again
    with _restored_lock:
        _restored[root] = {**kept, **done}
    errors = refused + batch.errors
    report = RestoreReport(
        source=f"s3://{uri.bucket}/{prefix}",
        local_path=local,
        downloaded=batch.files,
        kept=len(kept),
        bytes=batch.bytes,
        seconds=batch.seconds,
        failed=len(refused) + batch.failed,
        errors=tuple(errors[:50]),
    )
    if report.failed and not batch.stopped:
        raise SyncError(
            f"checkpoint restore from {report.source} to {local} is incomplete: {report.failed} "
            f"of {listed} objects failed; first: {errors[0]}",
            hint="fix access to the checkpoint S3Uri, or remove the broken objects",
        )
    return report
