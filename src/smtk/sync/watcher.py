"""Finding files to sync: inotify on every directory of a tree, with scans as the safety net.

One :class:`TreeWatcher` per synced tree runs in a daemon thread and tells the
:class:`~smtk.sync.uploader.Uploader` about files. What it reacts to, and why:

- ``IN_CLOSE_WRITE``: a file was written and closed -> upload it.
- ``IN_MOVED_TO``: a file was moved or renamed into place (the atomic-save pattern the
  reference misses) -> upload it; when the matching ``IN_MOVED_FROM`` (same cookie)
  came from this tree, the old name is a rename and its object is removed.
- ``IN_CREATE``/``IN_MOVED_TO`` of a directory -> watch it, then scan it: files created
  before the watch existed would otherwise never produce an event. The watch is
  always added *before* a directory is listed, so nothing falls between the two.
- ``IN_Q_OVERFLOW``: the kernel dropped events -> rescan the whole tree.
- ``ENOSPC`` from ``inotify_add_watch`` (``fs.inotify.max_user_watches`` reached), no
  inotify at all, or the root itself removed -> keep what is watched and also scan
  the tree every ``SMTK_SYNC_POLL_SECONDS``; logged once.

Scans compare each file's signature with what was uploaded, so they are cheap and
never cause duplicate uploads. :meth:`TreeWatcher.finish` stops the thread, reads the
last events and does one final scan, all before the uploader's final flush.

::

    watcher = TreeWatcher(0, target, uploader, settings)
    watcher.start()
    ...
    watcher.finish(deadline=time.monotonic() + 30)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat
import threading
import time
from typing import Any

from smtk.settings import SyncSettings
from smtk.sync.uploader import Target, Uploader, signature

log = logging.getLogger("smtk.sync")

#: How long an unmatched IN_MOVED_FROM waits for its IN_MOVED_TO (normally adjacent).
_MOVE_PAIR_SECONDS = 2.0
#: Wake-up interval of the watcher thread when nothing happens (for pending-move expiry).
_IDLE_SECONDS = 1.0


class TreeWatcher:
    """Watch one tree recursively and offer its files to an uploader."""

    def __init__(self, index: int, target: Target, uploader: Uploader, settings: SyncSettings) -> None:
        self.index = index
        self.root = target.root
        self.name = target.name
        self._uploader = uploader
        self._settings = settings
        self._inotify: Any = None
        self._flags: Any = None
        self._mask = 0
        self._wd_rel: dict[int, str] = {}
        self._moves: dict[int, tuple[str, bool, float]] = {}
        self._polling = settings.mode == "poll"
        self._poll_reason_logged = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.overflows = 0

    @property
    def polling(self) -> bool:
        return self._polling

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Watch the tree and queue what is already in it; then follow it in a thread."""
        if not self._polling:
            try:
                import inotify_simple

                self._flags = inotify_simple.flags
                f = inotify_simple.flags
                self._mask = int(
                    f.CLOSE_WRITE
                    | f.MOVED_TO
                    | f.MOVED_FROM
                    | f.CREATE
                    | f.DELETE_SELF
                    | f.ONLYDIR
                    | f.DONT_FOLLOW
                    | f.EXCL_UNLINK
                )
                self._inotify = inotify_simple.INotify()
            except (OSError, ImportError) as exc:
                self._fall_back(f"inotify is unavailable ({exc})")
        else:
            self._fall_back("SMTK_SYNC_MODE=poll")
        self._scan("")
        self._thread = threading.Thread(target=self._run, name=f"smtk-sync-watch-{self.name}", daemon=True)
        self._thread.start()

    def finish(self, deadline: float) -> None:
        """Stop following; take in the last events and rescan once (bounded by ``deadline``)."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("the %s watcher did not stop in time; skipping its final scan", self.name)
                return
        try:
            if self._inotify is not None:
                self._handle(list(self._inotify.read(timeout=0)))
            self._scan("", deadline=deadline)
        finally:
            self._close()

    def _close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _fall_back(self, reason: str) -> None:
        self._polling = True
        if not self._poll_reason_logged:
            self._poll_reason_logged = True
            log.warning(
                "%s: also scanning %s every %g s (SMTK_SYNC_POLL_SECONDS)",
                reason,
                self.root,
                self._settings.poll_seconds,
            )

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = time.monotonic() + self._settings.poll_seconds
        while not self._stop.is_set():
            timeout = _IDLE_SECONDS
            if self._polling:
                timeout = max(0.0, min(timeout, next_scan - time.monotonic()))
            fds = [self._wake_r] + ([self._inotify.fileno()] if self._inotify is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
                if self._stop.is_set():
                    return
                if self._inotify is not None and self._inotify.fileno() in ready:
                    self._handle(list(self._inotify.read(timeout=0)))
                if self._polling and time.monotonic() >= next_scan:
                    self._scan("")
                    next_scan = time.monotonic() + self._settings.poll_seconds
                self._expire_moves()
            except Exception:  # keep watching: a lost watcher loses every later file
                log.exception("error in the %s watcher; rescanning %s", self.name, self.root)
                time.sleep(_IDLE_SECONDS)
                self._scan("")

    # -- events -------------------------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        f = self._flags
        overflow = False
        for event in events:
            mask = event.mask
            if mask & f.Q_OVERFLOW:
                overflow = True
                continue
            if mask & f.IGNORED:
                rel = self._wd_rel.pop(event.wd, None)
                if rel == "":
                    self._fall_back(f"{self.root} was removed or replaced")
                continue
            base = self._wd_rel.get(event.wd)
            if base is None or not event.name:
                continue
            rel = f"{base}/{event.name}" if base else event.name
            is_dir = bool(mask & f.ISDIR)
            if mask & f.MOVED_FROM:
                self._moves[event.cookie] = (rel, is_dir, time.monotonic())
                if is_dir:
                    self._forget_dir(rel)
            elif mask & f.MOVED_TO:
                moved = self._moves.pop(event.cookie, None)
                if is_dir:
                    self._scan(rel)
                    if moved is not None:
                        self._uploader.renamed_dir(self.index, moved[0])
                elif moved is not None and not moved[1]:
                    self._uploader.renamed(self.index, moved[0], rel)
                else:
                    self._uploader.offer_event(self.index, rel)
            elif mask & f.CREATE:
                if is_dir:
                    self._scan(rel)
            elif mask & f.CLOSE_WRITE:
                self._uploader.offer_event(self.index, rel)
        if overflow:
            self.overflows += 1
            log.info("inotify queue overflowed; rescanning %s", self.root)
            self._scan("")

    def _forget_dir(self, rel: str) -> None:
        # The directory's watches stay valid if it reappears inside the tree (its scan
        # re-maps them); until then their events must not be read under the old name.
        prefix = rel + "/"
        for wd, path in list(self._wd_rel.items()):
            if path == rel or path.startswith(prefix):
                del self._wd_rel[wd]

    def _expire_moves(self) -> None:
        # An IN_MOVED_FROM with no IN_MOVED_TO: moved out of the tree, i.e. deleted here.
        now = time.monotonic()
        for cookie, (_rel, _is_dir, when) in list(self._moves.items()):
            if now - when > _MOVE_PAIR_SECONDS:
                del self._moves[cookie]

    # -- scanning -----------------------------------------------------------------------

    def _watch(self, rel: str) -> None:
        if self._inotify is None:
            return
        path = os.path.join(self.root, rel) if rel else self.root
        try:
            wd = self._inotify.add_watch(path, self._mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._fall_back("inotify watch limit reached (fs.inotify.max_user_watches)")
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self._fall_back(f"cannot watch {path} ({exc.strerror})")
            return
        self._wd_rel[wd] = rel

    def _scan(self, rel_dir: str, *, deadline: float | None = None) -> None:
        """Watch every directory under ``rel_dir`` and offer every regular file in it."""
        if rel_dir == "" and not os.path.isdir(self.root):
            return
        stack = [rel_dir]
        while stack:
            if deadline is not None and time.monotonic() > deadline:
                log.warning("final scan of %s cut short by the flush deadline", self.root)
                return
            rel = stack.pop()
            self._watch(rel)  # before listing: a file created after the listing still has an event
            path = os.path.join(self.root, rel) if rel else self.root
            try:
                entries = list(os.scandir(path))
            except OSError:
                continue  # removed (or replaced by a file) meanwhile
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(child)
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    self._uploader.offer_scanned(self.index, child, signature(st))
