"""Downloading many objects: listed page by page, many in flight, retried, stoppable, with progress.

Checkpoint restore and ``smtk local``'s ``s3://`` channels both download every object
under a prefix. :func:`download_many` keeps up to ``SMTK_S3_CONCURRENCY`` transfers in
flight on one :class:`~smtk.s3.engine.Engine` (the CRT client runs them on its own
threads; no Python thread per object), starting the next as soon as one ends, while
the listing is still paging in: the first bytes arrive after the first page, not after
the whole listing. A transient failure (connection, 5xx, throttling) is retried with
backoff for up to ``SMTK_SYNC_RETRY_SECONDS``; a permanent one (access denied, no such
key) is recorded and the rest go on. A stop cancels what is in flight and returns at
once (``stopped`` in the result; the caller raises). Every file is written under a
temporary name in its directory and renamed into place when complete, so a path either
holds a whole object or nothing new.

A transfer longer than ``SMTK_TRANSFER_PROGRESS_SECONDS`` logs its progress::

    checkpoints: 3 of 8 files, 768.0 MiB of 2.0 GiB (37%), 181.2 MiB/s, ~7 s left

::

    result = download_prefix("s3://bucket/data/train", "/tmp/train", os.environ, label="channel train")
    result.files, result.bytes, result.failed
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smtk.errors import ConfigError
from smtk.progress import Progress, human_size
from smtk.s3 import parse_s3_uri
from smtk.s3.engine import Engine, Transfer
from smtk.s3.retry import Aborted, RetryPolicy, describe, is_transient
from smtk.settings import S3Settings

if TYPE_CHECKING:
    from smtk.stop import Stop

log = logging.getLogger("smtk.s3")

#: Failures listed in a result (the count is always exact).
_MAX_LISTED = 50


@dataclass(frozen=True)
class Wanted:
    """One object to fetch: ``s3://bucket/key`` (``size`` bytes) into ``path``."""

    key: str
    path: str
    size: int


@dataclass
class BatchResult:
    """What :func:`download_many` did."""

    done: list[Wanted] = field(default_factory=list)
    failed: int = 0
    #: The first failures, ``s3://bucket/key: Code: message``.
    errors: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    #: A stop ended it before everything was fetched.
    stopped: bool = False

    @property
    def files(self) -> int:
        return len(self.done)

    def note_failure(self, message: str) -> None:
        self.failed += 1
        if len(self.errors) < _MAX_LISTED:
            self.errors.append(message)


class ListingError(Exception):
    """Listing ``s3://bucket/prefix`` failed for good (permanent error, or retries ran out)."""

    def __init__(self, bucket: str, prefix: str, cause: BaseException) -> None:
        super().__init__(f"cannot list s3://{bucket}/{prefix}: {describe(cause)}")
        self.cause = cause


def stoppable_policy(stop: Stop | None, max_seconds: float, max_wait_seconds: float = 5.0) -> RetryPolicy:
    """A retry policy whose waits end (with :class:`~smtk.s3.retry.Aborted`) when ``stop`` arrives."""
    abort = threading.Event()
    if stop is not None:
        stop.on_stop(lambda _signum: abort.set())
        if stop.requested:
            abort.set()
    return RetryPolicy(max_seconds=max_seconds, max_wait_seconds=max_wait_seconds, abort=abort)


def list_objects(client: Any, bucket: str, prefix: str, policy: RetryPolicy) -> Iterator[tuple[str, int]]:
    """``(key, size)`` of every object under ``prefix``, one page (1,000) at a time, each
    page retried like a transfer; :class:`ListingError` when a page cannot be had."""
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        try:
            page = policy.call(client.list_objects_v2, **request)
        except Aborted:
            raise
        except Exception as exc:
            raise ListingError(bucket, prefix, exc) from exc
        for item in page.get("Contents", ()):
            yield str(item["Key"]), int(item["Size"])
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return
        request["ContinuationToken"] = token


@dataclass(order=True)
class _Retry:
    ready_at: float
    attempt: int
    wanted: Wanted = field(compare=False)
    first_failure: float = field(compare=False)


def download_many(
    engine: Engine,
    bucket: str,
    wanted: Iterable[Wanted],
    *,
    concurrency: int,
    policy: RetryPolicy,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> BatchResult:
    """Fetch every ``wanted`` object (taken from the iterable only as room frees up);
    see the module doc. Returns when all ended, or at once after a stop."""
    result = BatchResult()
    started = time.monotonic()
    finished: queue.SimpleQueue[Transfer | None] = queue.SimpleQueue()
    in_flight: dict[Transfer, Wanted] = {}
    retries: list[_Retry] = []
    attempts: dict[Wanted, tuple[int, float]] = {}  # only for objects that failed once
    made: set[str] = set()
    source = iter(wanted)
    listing = True
    remove = stop.on_stop(lambda _signum: finished.put(None)) if stop is not None else None

    def start(item: Wanted) -> None:
        directory = os.path.dirname(item.path)
        if directory not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(directory)
        moved = progress.advance if progress is not None else None
        transfer = engine.download(
            bucket, item.key, item.path, size=item.size, progress=moved, on_done=finished.put
        )
        in_flight[transfer] = item

    try:
        while listing or in_flight or retries:
            if stop is not None and stop.requested:
                result.stopped = True
                break
            now = time.monotonic()
            while retries and retries[0].ready_at <= now and len(in_flight) < concurrency:
                start(heapq.heappop(retries).wanted)
            while listing and len(in_flight) < concurrency:
                item = next(source, None)
                if item is None:
                    listing = False
                    if progress is not None:
                        progress.expect(final=True)
                    break
                if progress is not None:
                    progress.expect(files=1, size=item.size, final=False)
                try:
                    start(item)
                except OSError as exc:  # the directory cannot be made: a local problem, not S3's
                    result.note_failure(f"{item.path}: {exc.strerror or exc}")
            if not in_flight:
                if retries:
                    time.sleep(min(0.25, max(0.0, retries[0].ready_at - time.monotonic())))
                continue
            wait = 0.25 if not retries else min(0.25, max(0.0, retries[0].ready_at - time.monotonic()))
            try:
                transfer = finished.get(timeout=wait)
            except queue.Empty:
                continue
            if transfer is None:  # the stop's wake-up
                continue
            item = in_flight.pop(transfer)
            _settle(engine, transfer, item, result, retries, attempts, policy, progress, now)
    finally:
        if remove is not None:
            remove()
        if result.stopped:
            for transfer in in_flight:
                transfer.cancel()
    result.seconds = time.monotonic() - started
    return result


def _settle(
    engine: Engine,
    transfer: Transfer,
    item: Wanted,
    result: BatchResult,
    retries: list[_Retry],
    attempts: dict[Wanted, tuple[int, float]],
    policy: RetryPolicy,
    progress: Progress | None,
    now: float,
) -> None:
    """Count one ended transfer: done, to be retried, or failed."""
    try:
        transfer.result()
    except Exception as exc:
        count, first = attempts.get(item, (0, now))
        if engine.fall_back(transfer, exc):
            heapq.heappush(retries, _Retry(now, count, item, first))
            return
        if is_transient(exc) and now - first < policy.max_seconds:
            count += 1
            attempts[item] = (count, first)
            ceiling = min(policy.max_wait_seconds, policy.first_wait_seconds * 2 ** (count - 1))
            heapq.heappush(retries, _Retry(now + random.uniform(ceiling / 2, ceiling), count, item, first))
            return
        attempts.pop(item, None)
        result.note_failure(f"{transfer.what}: {describe(exc)}")
        return
    attempts.pop(item, None)
    result.done.append(item)
    result.bytes += item.size
    if progress is not None:
        progress.file_done()


@dataclass(frozen=True)
class PrefixResult:
    """What :func:`download_prefix` did."""

    source: str
    target: str
    files: int
    bytes: int
    seconds: float
    failed: int
    errors: tuple[str, ...]
    stopped: bool

    def summary(self) -> str:
        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"{self.files} files ({human_size(self.bytes)}) from {self.source} in {self.seconds:.1f} s"
            f" ({human_size(rate)}/s)"
        )
        return text + (f"; {self.failed} failed" if self.failed else "")


def object_path(target: str, prefix: str, key: str) -> str | None:
    """Where ``key`` (under ``prefix``) goes inside ``target``, or None when it cannot go
    there: a "directory" marker, or a key whose path would leave ``target`` (``..``, empty
    parts). The object the prefix names exactly keeps its base name."""
    if key.endswith("/"):
        return None
    rel = key[len(prefix) :] if key.startswith(prefix) else key
    rel = rel.lstrip("/") or key.rsplit("/", 1)[-1]
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return os.path.join(target, *parts)


def download_prefix(
    uri: str,
    target: str,
    environ: Mapping[str, str],
    *,
    settings: S3Settings | None = None,
    retry_seconds: float = 900.0,
    stop: Stop | None = None,
    label: str = "",
    select: Callable[[int, str], bool] | None = None,
) -> PrefixResult:
    """Download every object under ``uri`` (``s3://bucket/prefix``) into ``target``,
    keeping the key's path below the prefix. ``select(position, key)`` picks objects (in
    key order; e.g. one shard). A key that would leave ``target`` is a :class:`ConfigError`
    before anything is written."""
    location = parse_s3_uri(uri, label or "S3 source")
    settings = settings if settings is not None else S3Settings()
    engine = Engine(environ, settings, threads=min(settings.concurrency, 32))
    policy = stoppable_policy(stop, retry_seconds)
    prefix = location.key
    root = os.path.abspath(target)
    os.makedirs(root, exist_ok=True)

    def wanted() -> Iterator[Wanted]:
        position = 0
        for key, size in list_objects(engine.client, location.bucket, prefix, policy):
            if key.endswith("/"):
                continue
            index, position = position, position + 1
            if select is not None and not select(index, key):
                continue
            path = object_path(root, prefix.rstrip("/"), key)
            if path is None:
                raise ConfigError(
                    label or "S3 source", None, f"object keys that map to paths inside {target}", key
                )
            yield Wanted(key, path, size)

    progress = Progress(label or uri, log, interval=settings.progress_seconds)
    try:
        with progress:
            batch = download_many(
                engine,
                location.bucket,
                wanted(),
                concurrency=settings.concurrency,
                policy=policy,
                progress=progress,
                stop=stop,
            )
    finally:
        engine.close(cancel=True, wait=stop is None or not stop.requested)
    return PrefixResult(
        source=str(location),
        target=target,
        files=batch.files,
        bytes=batch.bytes,
        seconds=batch.seconds,
        failed=batch.failed,
        errors=tuple(batch.errors),
        stopped=batch.stopped,
    )
