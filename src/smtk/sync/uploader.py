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
- Files go through one :class:`~smtk.s3.engine.Engine` (AWS's CRT client, or
  botocore's classic one): one ``PutObject`` below ``multipart_threshold`` bytes,
  parallel parts above. The file's signature is taken before and after: a file that
  changed while it was read is queued again. Transient errors are retried with
  backoff (:mod:`smtk.s3.retry`); a permanent one is logged once per bucket and error
  code. An upload that takes longer than ``SMTK_TRANSFER_PROGRESS_SECONDS`` logs its
  progress, and so does the final flush.
- :meth:`Uploader.flush` drains everything within a deadline; :meth:`Uploader.abort`
  gives up on the rest. Threads are daemons: nothing here can keep the job alive.

::

    uploader = Uploader([Target("intermediate", root, "bucket", "prefix")], settings, environ, s3_settings)
    uploader.start()
    uploader.offer_event(0, "metrics/epoch-1.json")
    drained = uploader.flush(deadline=time.monotonic() + 30)
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smtk.progress import Progress, human_size
from smtk.s3.engine import Engine, Transfer
from smtk.s3.retry import Aborted, RetryPolicy, describe, error_code, is_transient
from smtk.settings import S3Settings, SyncSettings
from smtk.sync.results import TargetCounts

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
        s3: S3Settings | None = None,
    ) -> None:
        self.targets = targets
        self.settings = settings
        self._s3 = s3 if s3 is not None else S3Settings()
        self._engine = Engine(
            environ, self._s3, threads=settings.workers, multipart_threshold=settings.multipart_threshold
        )
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
        self._transfers: set[Transfer] = set()
        self._flush_progress: Progress | None = None
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
            self._engine.kind  # noqa: B018 - builds the clients
        except Exception as exc:  # the first upload builds it again and reports the error
            log.debug("could not build the S3 client yet: %s", exc)

    def flush(self, deadline: float | Callable[[], float]) -> bool:
        """Upload everything queued, ignoring the debounce; ``False`` if the deadline passed first.

        ``deadline`` may be a function, looked at twice a second: a stop that arrives
        during the flush can bring it forward.
        """
        when = deadline if callable(deadline) else (lambda: deadline)
        progress = self._start_flush_progress()
        try:
            with self._cond:
                self._flushing = True
                self._cond.notify_all()
                while self._pending or self._in_flight:
                    remaining = when() - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.5))
            return True
        finally:
            if progress is not None:
                progress.finish()

    def _start_flush_progress(self) -> Progress | None:
        """Count what the flush has to send, for its progress lines (a stat per file)."""
        outstanding = self.outstanding()
        if not outstanding:
            return None
        size = 0
        for target, rel in outstanding:
            with contextlib.suppress(OSError):  # gone: the flush will skip it
                size += os.stat(os.path.join(self.targets[target].root, rel)).st_size
        progress = Progress("sync: final flush", log, interval=self._s3.progress_seconds)
        progress.expect(files=len(outstanding), size=size)
        log.info("sync: flushing %d files (%s) to S3", len(outstanding), human_size(size))
        self._flush_progress = progress
        return progress.start()

    def abort(self) -> int:
        """Stop all work now; return how many paths were still waiting or uploading."""
        with self._cond:
            abandoned = len(self._pending) + len(self._in_flight)
            self._abort.set()
            self._cond.notify_all()
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.cancel()
        self._engine.close(cancel=True, wait=False)
        return abandoned

    def close(self) -> None:
        """End the worker threads once idle (after a successful :meth:`flush`)."""
        with self._cond:
            self._abort.set()
            self._cond.notify_all()
        self._engine.close(cancel=True, wait=False)

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
            # Uploading right now counts too: its object may already be in S3 (re-queued,
            # the path is then found gone and the object removed).
            keys = [
                k for k in (*self._uploaded, *self._in_flight) if k[0] == target and k[1].startswith(prefix)
            ]
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
            self._upload(key, path, sig)
        except (FileNotFoundError, NotADirectoryError):
            self._missing(key)
        except Aborted:
            raise
        except Exception as exc:
            if not os.path.lexists(path):
                self._missing(key)  # gone while it was read: nothing to report
            else:
                self._record_failure(key, exc)

    def _upload(self, key: _Key, path: str, before: Signature) -> None:
        target = self.targets[key[0]]
        object_key = target.key(key[1])
        read_start = time.time_ns()
        size = before[1]
        progress = None
        if size >= self.settings.multipart_threshold:
            progress = Progress(f"sync: {key[1]}", log, interval=self._s3.progress_seconds)
            progress.expect(files=1, size=size)

        def moved(count: int) -> None:
            if progress is not None:
                progress.advance(count)
            flush = self._flush_progress
            if flush is not None:
                flush.advance(count)

        started: list[Transfer] = []

        def start() -> Transfer:
            transfer = self._engine.upload(path, target.bucket, object_key, size=size, progress=moved)
            started.append(transfer)
            with self._cond:
                self._transfers.add(transfer)  # abort() cancels it at once
            return transfer

        def attempt() -> None:
            try:
                self._engine.complete(start, self._abort)
            finally:
                with self._cond:
                    self._transfers.difference_update(started)

        if progress is not None:
            progress.start()
        try:
            self._policy.call(attempt)
        finally:
            if progress is not None:
                progress.finish()
        try:
            after: Signature | None = signature(os.stat(path))
        except OSError:
            after = None
        if after != before:
            # Changed (or replaced) while it was read: the upload may be torn.
            self._enqueue(key, forced=True)
        self._succeeded(key, before, read_start, size)

    def _succeeded(self, key: _Key, sig: Signature, read_start_ns: int, size: int) -> None:
        stable = sig[3] < read_start_ns - _STABLE_MARGIN_NS
        with self._cond:
            self._uploaded[key] = (sig, stable)
            self._ever_uploaded.add(key)
            self._failed.pop(key, None)
            counts = self._counts[key[0]]
            counts.uploads += 1
            counts.bytes += size
        flush = self._flush_progress
        if flush is not None:
            flush.file_done()

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
            self._policy.call(self._engine.client.delete_object, Bucket=target.bucket, Key=target.key(key[1]))
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
