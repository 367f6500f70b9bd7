"""The upload side of sync: a per-path work queue drained by a few daemon threads.

Watchers (or scans) *offer* paths; the :class:`Uploader` decides what to send. The
rules that make it lose nothing and send little twice:

- Work is deduplicated per path. A path notified again while it is uploading is
  re-queued after that upload ends, so the last content always wins.
- A path becomes ready ``debounce`` seconds after its first notification, so a file
  written and immediately renamed is usually seen under its final name only.
- Each upload records the file's signature ``(inode, size, mtime_ns, ctime_ns)``. A
  rescan offers a path only when its signature changed; an inotify event
  (``forced``) re-uploads unless the recorded upload is known to contain the final
  bytes (the file's ctime was already old when it was read).
- A file gone before its upload is skipped. A name that was *renamed away* inside
  the tree after being uploaded has its object deleted (the content lives on under
  the new name); a plain deletion is not propagated.
- Small files are read into memory and sent with one ``PutObject``: by the lean
  signed PUT of :mod:`smtk.sync.fastput` once it has learned the bucket's route
  from botocore, else (and whenever that fails) by botocore's ``put_object``. Files
  of at least ``multipart_threshold`` bytes go through boto3's ``TransferManager``
  (multipart, parallel parts). Transient errors are retried with backoff
  (:mod:`smtk.sync.retry`); a permanent one is logged once per bucket and error code.
- :meth:`Uploader.flush` drains everything within a deadline; :meth:`Uploader.abort`
  gives up on the rest. Threads are daemons: nothing here can keep the job alive.

::

    uploader = Uploader([Target("intermediate", root, "bucket", "prefix")], settings, environ)
    uploader.start()
    uploader.offer_event(0, "metrics/epoch-1.json")
    drained = uploader.flush(deadline=time.monotonic() + 30)
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smtk.s3 import make_client
from smtk.settings import SyncSettings
from smtk.sync.fastput import FastPut
from smtk.sync.results import TargetCounts
from smtk.sync.retry import Aborted, RetryPolicy, describe, error_code, is_transient

if TYPE_CHECKING:
    from smtk.sync.fastput import FastPut

log = logging.getLogger("smtk.sync")

#: (inode, size, mtime_ns, ctime_ns): what identifies one version of a file.
Signature = tuple[int, int, int, int]
_Key = tuple[int, str]

#: An upload is known to hold the final bytes when the file's ctime was at least this
#: much older than the moment the read began (covers the kernel's coarse timestamps).
_STABLE_MARGIN_NS = 100_000_000
_MAX_ERRORS = 50

_HINTS = {
    "NoSuchBucket": "the bucket does not exist; check the S3 URI",
    "AccessDenied": "the job's credentials may not write there (s3:PutObject)",
    "AllAccessDisabled": "all access to this bucket is disabled",
    "InvalidAccessKeyId": "the AWS access key id is not valid; check the credentials",
    "SignatureDoesNotMatch": "the AWS secret key does not match; check the credentials",
    "NoCredentialsError": "no AWS credentials were found",
    "InvalidBucketName": "the bucket name is not valid; check the S3 URI",
}


def signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Target:
    """One local tree mirrored under one S3 prefix."""

    name: str
    root: str
    bucket: str
    prefix: str

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass
class _Item:
    ready_at: float
    forced: bool


@dataclass
class _Counts:
    uploads: int = 0
    bytes: int = 0
    removed: int = 0
    skipped: int = 0


class Uploader:
    """Deduplicating, retrying, bounded-concurrency uploads for one or more targets."""

    def __init__(
        self,
        targets: list[Target],
        settings: SyncSettings,
        environ: Mapping[str, str],
    ) -> None:
        self.targets = targets
        self.settings = settings
        self._environ = dict(environ)
        self._cond = threading.Condition()
        self._pending: OrderedDict[_Key, _Item] = OrderedDict()
        self._in_flight: set[_Key] = set()
        self._redo: dict[_Key, bool] = {}
        self._uploaded: dict[_Key, tuple[Signature, bool]] = {}
        self._ever_uploaded: set[_Key] = set()
        self._renamed_away: set[_Key] = set()
        self._failed: dict[_Key, str] = {}
        self._counts = [_Counts() for _ in targets]
        self._errors: list[str] = []
        self._reported: set[tuple[str, str]] = set()
        self._flushing = False
        self._abort = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._manager: Any = None
        self._fast: FastPut | None = None
        self._fast_checked = False
        self._transfers: set[Any] = set()
        self._policy = RetryPolicy(
            max_seconds=settings.retry_seconds,
            max_wait_seconds=settings.retry_max_wait_seconds,
            abort=self._abort,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"smtk-sync-upload-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        # Importing boto3 and building the client takes ~0.3 s of CPU: do it now, beside
        # the user's start-up, rather than in front of the first file's upload.
        threading.Thread(target=self._warm_up, name="smtk-sync-client", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self._get_client()
            self._get_fast()
        except Exception as exc:  # the first upload builds it again and reports the error
            log.debug("could not build the S3 client yet: %s", exc)

    def flush(self, deadline: float | Callable[[], float]) -> bool:
        """Upload everything queued, ignoring the debounce; ``False`` if the deadline passed first.

        ``deadline`` may be a function, looked at twice a second: a stop that arrives
        during the flush can bring it forward.
        """
        when = deadline if callable(deadline) else (lambda: deadline)
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while self._pending or self._in_flight:
                remaining = when() - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    def abort(self) -> int:
        """Stop all work now; return how many paths were still waiting or uploading."""
        with self._cond:
            abandoned = len(self._pending) + len(self._in_flight)
            self._abort.set()
            self._cond.notify_all()
            transfers = list(self._transfers)
        for future in transfers:
            future.cancel()
        self._close_manager()
        self._close_fast()
        return abandoned

    def close(self) -> None:
        """End the worker threads once idle (after a successful :meth:`flush`)."""
        with self._cond:
            self._abort.set()
            self._cond.notify_all()
        self._close_manager()
        self._close_fast()

    def _close_manager(self) -> None:
        manager = self._manager
        if manager is not None:
            # shutdown() waits for running transfers; never let that wait block the job.
            threading.Thread(target=manager.shutdown, kwargs={"cancel": True}, daemon=True).start()

    def _close_fast(self) -> None:
        fast = self._fast
        if fast is not None:
            log.debug(
                "fast PUT path: %d objects sent, %d handed to botocore after a failure%s",
                fast.sent,
                fast.fell_back,
                "" if fast.enabled else " (switched off)",
            )
            fast.close()

    # -- what watchers call ---------------------------------------------------------

    def offer_event(self, target: int, rel: str) -> None:
        """A file was closed after writing or moved in: upload its current content."""
        self._enqueue((target, rel), forced=True)

    def offer_scanned(self, target: int, rel: str, sig: Signature) -> None:
        """A scan found this file: upload it unless this exact version was uploaded."""
        with self._cond:
            previous = self._uploaded.get((target, rel))
            if previous is not None and previous[0] == sig:
                return
        self._enqueue((target, rel), forced=False)

    def renamed(self, target: int, old: str, new: str) -> None:
        """``old`` was renamed to ``new`` inside the tree."""
        with self._cond:
            self._renamed_away.add((target, old))
        self._enqueue((target, old), forced=True)
        self._enqueue((target, new), forced=True)

    def renamed_dir(self, target: int, old: str) -> None:
        """Directory ``old`` was renamed inside the tree (its new name is scanned separately)."""
        prefix = old + "/"
        with self._cond:
            keys = [k for k in self._uploaded if k[0] == target and k[1].startswith(prefix)]
            self._renamed_away.update(keys)
        for key in keys:
            self._enqueue(key, forced=True)

    def seed(self, target: int, rel: str, sig: Signature) -> None:
        """Record that this version already is in S3 (restored checkpoints)."""
        with self._cond:
            self._uploaded[(target, rel)] = (sig, True)

    def _enqueue(self, key: _Key, *, forced: bool) -> None:
        with self._cond:
            if self._abort.is_set():
                return
            if key in self._in_flight:
                self._redo[key] = self._redo.get(key, False) or forced
                return
            item = self._pending.get(key)
            if item is not None:
                item.forced = item.forced or forced
                return
            self._pending[key] = _Item(time.monotonic() + self.settings.debounce_seconds, forced)
            self._cond.notify()

    # -- results ----------------------------------------------------------------------

    def counts(self, abandoned: set[_Key] | None = None) -> list[TargetCounts]:
        with self._cond:
            result = []
            for index, target in enumerate(self.targets):
                c = self._counts[index]
                result.append(
                    TargetCounts(
                        name=target.name,
                        destination=target.destination,
                        uploaded=sum(1 for k in self._ever_uploaded if k[0] == index),
                        uploads=c.uploads,
                        bytes=c.bytes,
                        failed=sum(1 for k in self._failed if k[0] == index),
                        removed=c.removed,
                        pending_abandoned=sum(1 for k in (abandoned or ()) if k[0] == index),
                    )
                )
            return result

    def outstanding(self) -> set[_Key]:
        with self._cond:
            return set(self._pending) | set(self._in_flight)

    def errors(self) -> tuple[str, ...]:
        with self._cond:
            return tuple(self._errors)

    # -- the workers --------------------------------------------------------------------

    def _take(self) -> tuple[_Key, bool] | None:
        with self._cond:
            while True:
                if self._abort.is_set():
                    return None
                if self._pending:
                    key, item = next(iter(self._pending.items()))
                    wait = item.ready_at - time.monotonic()
                    if self._flushing or wait <= 0:
                        del self._pending[key]
                        self._in_flight.add(key)
                        return key, item.forced
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _done(self, key: _Key) -> None:
        with self._cond:
            self._in_flight.discard(key)
            if key in self._redo:
                forced = self._redo.pop(key)
                self._pending[key] = _Item(time.monotonic() + self.settings.debounce_seconds, forced)
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, forced = taken
            try:
                self._process(key, forced)
            except Aborted:
                return
            except Exception as exc:  # a bug must not kill the thread and strand the queue
                log.exception("unexpected error while syncing %s", self._where(key))
                self._record_failure(key, exc)
            finally:
                self._done(key)

    def _process(self, key: _Key, forced: bool) -> None:
        target = self.targets[key[0]]
        path = os.path.join(target.root, key[1])
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._missing(key)
            return
        if not stat.S_ISREG(st.st_mode):
            return  # FIFOs, sockets, devices: nothing to upload (and opening could block)
        with self._cond:
            self._renamed_away.discard(key)
            previous = self._uploaded.get(key)
        sig = signature(st)
        if previous is not None and previous[0] == sig and (previous[1] or not forced):
            return
        try:
            if st.st_size >= self.settings.multipart_threshold:
                self._upload_large(key, path)
            else:
                self._upload_small(key, path)
        except (FileNotFoundError, NotADirectoryError):
            self._missing(key)
        except Aborted:
            raise
        except Exception as exc:
            self._record_failure(key, exc)

    def _upload_small(self, key: _Key, path: str) -> None:
        target = self.targets[key[0]]
        read_start = time.time_ns()
        with open(path, "rb") as handle:
            before = signature(os.fstat(handle.fileno()))
            data = handle.read()
            after = signature(os.fstat(handle.fileno()))
        if before != after:
            # Being written right now; its close will notify again, but do not rely on it.
            self._enqueue(key, forced=True)
            return
        client = self._get_client()
        object_key = target.key(key[1])
        fast = self._get_fast()
        if fast is None or not fast.put(target.bucket, object_key, data):
            if self._abort.is_set():
                raise Aborted("sync stopped during the upload")
            # botocore: before the bucket's route is known (this request teaches it), and
            # for any object the fast path could not store (errors, retries, redirects and
            # their reports exactly as without it).
            learning: AbstractContextManager[None] = (
                nullcontext() if fast is None else fast.observe(target.bucket, object_key, data)
            )
            with learning:
                self._policy.call(client.put_object, Bucket=target.bucket, Key=object_key, Body=data)
        self._succeeded(key, before, read_start, len(data))

    def _upload_large(self, key: _Key, path: str) -> None:
        target = self.targets[key[0]]
        read_start = time.time_ns()
        before = signature(os.stat(path))
        manager = self._get_manager()

        def attempt() -> None:
            future = manager.upload(path, target.bucket, target.key(key[1]))
            with self._cond:
                self._transfers.add(future)
            try:
                future.result()
            finally:
                with self._cond:
                    self._transfers.discard(future)

        self._policy.call(attempt)
        try:
            after: Signature | None = signature(os.stat(path))
        except OSError:
            after = None
        if after != before:
            # Changed (or replaced) while its parts were read: the upload may be torn.
            self._enqueue(key, forced=True)
        self._succeeded(key, before, read_start, before[1])

    def _succeeded(self, key: _Key, sig: Signature, read_start_ns: int, size: int) -> None:
        stable = sig[3] < read_start_ns - _STABLE_MARGIN_NS
        with self._cond:
            self._uploaded[key] = (sig, stable)
            self._ever_uploaded.add(key)
            self._failed.pop(key, None)
            counts = self._counts[key[0]]
            counts.uploads += 1
            counts.bytes += size

    def _missing(self, key: _Key) -> None:
        with self._cond:
            was_renamed = key in self._renamed_away
            self._renamed_away.discard(key)
            had_object = key in self._uploaded
            if was_renamed:
                # Its content lives on under the new name: not a loss.
                self._failed.pop(key, None)
            if not (was_renamed and had_object):
                self._counts[key[0]].skipped += 1
                return
        target = self.targets[key[0]]
        try:
            self._policy.call(self._get_client().delete_object, Bucket=target.bucket, Key=target.key(key[1]))
        except Aborted:
            raise
        except Exception as exc:
            self._note_error(key, exc, count_as_failed=False)
            return
        with self._cond:
            self._uploaded.pop(key, None)
            self._counts[key[0]].removed += 1

    # -- errors -------------------------------------------------------------------------

    def _where(self, key: _Key) -> str:
        target = self.targets[key[0]]
        return f"s3://{target.bucket}/{target.key(key[1])}"

    def _record_failure(self, key: _Key, exc: BaseException) -> None:
        self._note_error(key, exc, count_as_failed=True)

    def _note_error(self, key: _Key, exc: BaseException, *, count_as_failed: bool) -> None:
        target = self.targets[key[0]]
        code = error_code(exc)
        text = describe(exc)
        if is_transient(exc):
            text = f"gave up after {self.settings.retry_seconds:g} s of retries: {text}"
        # Masked where it leaves the process: the log handler and the failure files.
        message = f"{self._where(key)}: {text}"
        with self._cond:
            if count_as_failed:
                self._failed[key] = message
            if len(self._errors) < _MAX_ERRORS:
                self._errors.append(message)
            first = (target.bucket, code) not in self._reported
            self._reported.add((target.bucket, code))
        if first:
            hint = _HINTS.get(code, "")
            log.error(
                "could not sync %s from %s to %s%s; further %s errors for this bucket are counted, "
                "not logged",
                key[1],
                target.root,
                message,
                f" ({hint})" if hint else "",
                code,
            )
        else:
            log.debug("sync failed: %s", message)

    # -- boto3, built on first use ------------------------------------------------------

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                # Our own retry loop does the patient retrying; botocore only smooths blips.
                self._client = make_client(
                    self._environ, max_pool_connections=self.settings.workers * 2 + 4, retries=2
                )
            return self._client

    def _get_fast(self) -> FastPut | None:
        """The lean PUT path for small files, or ``None`` (switched off or not applicable)."""
        if self._fast_checked:
            return self._fast
        client = self._get_client()
        with self._client_lock:
            if not self._fast_checked:
                if self.settings.fast_put:
                    try:
                        self._fast = FastPut.create(client, self._environ)
                    except Exception as exc:  # botocore changed under us: do without it
                        log.debug("the fast PUT path is not available: %s", type(exc).__name__)
                self._fast_checked = True
            return self._fast

    def _get_manager(self) -> Any:
        client = self._get_client()
        with self._client_lock:
            if self._manager is None:
                from boto3.s3.transfer import TransferConfig
                from s3transfer.manager import TransferManager

                config = TransferConfig(
                    multipart_threshold=self.settings.multipart_threshold,
                    multipart_chunksize=8 * 1024 * 1024,
                    max_concurrency=self.settings.workers,
                )
                self._manager = TransferManager(client, config)
            return self._manager
