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
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from smtk.errors import SyncError
from smtk.s3 import S3Uri, make_client, parse_s3_uri
from smtk.settings import SyncSettings
from smtk.stop import Stop
from smtk.sync.results import RestoreReport
from smtk.sync.retry import RetryPolicy, describe
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

    ``None`` when checkpoint sync is off or there is no ``S3Uri``. After a stop no
    further file is started (the caller's :meth:`~smtk.stop.Stop.call` has returned).
    """
    settings = env.settings.sync
    source = checkpoint_source(env, settings)
    if source is None:
        return None
    local, uri = source
    started = time.monotonic()
    try:
        os.makedirs(local, exist_ok=True)
    except OSError as exc:
        raise SyncError(
            f"cannot create the checkpoint directory {local}: {exc.strerror}",
            hint="check checkpointconfig.json LocalPath",
        ) from None

    client = make_client(client_environ(env), max_pool_connections=settings.workers * 2 + 4, retries=2)
    policy = RetryPolicy(max_seconds=settings.retry_seconds, max_wait_seconds=settings.retry_max_wait_seconds)
    prefix = uri.key.rstrip("/") + "/" if uri.key.strip("/") else ""
    objects = _list(client, policy, uri.bucket, prefix)

    root = os.path.realpath(local)
    todo: list[tuple[str, str, int]] = []
    kept: dict[str, Signature] = {}
    errors: list[str] = []
    for key, size in objects:
        rel = key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # "directory" marker objects
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            errors.append(f"s3://{uri.bucket}/{key}: refused, the key does not map to a path inside {local}")
            continue
        dest = os.path.join(root, *parts)
        try:
            st = os.stat(dest)
            if st.st_size == size:
                kept[rel] = signature(st)
                continue
        except OSError:
            pass
        todo.append((key, rel, size))

    done: dict[str, Signature] = {}
    lock = threading.Lock()
    total_bytes = 0

    def download(item: tuple[str, str, int]) -> None:
        nonlocal total_bytes
        key, rel, size = item
        if stop is not None and stop.requested:
            return
        dest = os.path.join(root, *rel.split("/"))
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            policy.call(_download, client, uri.bucket, key, dest, size, settings.multipart_threshold)
            sig = signature(os.stat(dest))
        except Exception as exc:
            with lock:
                errors.append(f"s3://{uri.bucket}/{key}: {describe(exc)}")
            return
        with lock:
            done[rel] = sig
            total_bytes += size

    _run_threads(download, todo, settings.workers)
    with _restored_lock:
        _restored[root] = {**kept, **done}
    report = RestoreReport(
        source=f"s3://{uri.bucket}/{prefix}",
        local_path=local,
        downloaded=len(done),
        kept=len(kept),
        bytes=total_bytes,
        seconds=time.monotonic() - started,
        failed=len(errors),
        errors=tuple(errors[:50]),
    )
    if errors:
        raise SyncError(
            f"checkpoint restore from {report.source} to {local} is incomplete: {len(errors)} "
            f"of {len(objects)} objects failed; first: {errors[0]}",
            hint="fix access to the checkpoint S3Uri, or remove the broken objects",
        )
    return report


def _list(client: Any, policy: RetryPolicy, bucket: str, prefix: str) -> list[tuple[str, int]]:
    def list_all() -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", []))
        return found

    try:
        return policy.call(list_all)
    except Exception as exc:
        raise SyncError(
            f"cannot list checkpoints at s3://{bucket}/{prefix}: {describe(exc)}",
            hint="check checkpointconfig.json S3Uri and the job's S3 permissions",
        ) from None


def _download(client: Any, bucket: str, key: str, dest: str, size: int, threshold: int) -> None:
    if size >= threshold:
        # download_file does ranged parallel GETs and writes through a temp file itself.
        client.download_file(bucket, key, dest)
        return
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    tmp = f"{dest}.smtk-restore-{os.urandom(4).hex()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(body)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _run_threads(fn: Any, items: list[Any], workers: int) -> None:
    """Run ``fn`` over ``items`` in up to ``workers`` daemon threads and wait for all."""
    work: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for item in items:
        work.put(item)

    def loop() -> None:
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            fn(item)

    threads = [
        threading.Thread(target=loop, name=f"smtk-restore-{i}", daemon=True)
        for i in range(min(workers, len(items)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
