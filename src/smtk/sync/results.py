"""What a sync or a checkpoint restore did, as plain values for ``train`` to log and judge.

::

    report = handle.stop(timeout=30)
    log.info(report.summary())
    if report.fails_job:  # SMTK_SYNC_STRICT=1 and something did not arrive
        ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtk.progress import human_size


@dataclass(frozen=True)
class TargetCounts:
    """Counts for one synced tree (``intermediate`` or ``checkpoints``)."""

    name: str
    destination: str
    uploaded: int = 0
    uploads: int = 0
    bytes: int = 0
    failed: int = 0
    removed: int = 0
    pending_abandoned: int = 0


@dataclass(frozen=True)
class SyncReport:
    """The outcome of a sync, produced by :meth:`smtk.sync.SyncHandle.stop`.

    ``uploaded``: distinct files uploaded at least once; ``failed``: distinct files whose
    latest upload failed; ``pending_abandoned``: files still waiting (or uploading) when
    the flush deadline passed; ``seconds``: how long the final flush took; ``errors``:
    short redacted descriptions (at most a few dozen).
    """

    uploaded: int
    failed: int
    pending_abandoned: int
    seconds: float
    errors: tuple[str, ...] = ()
    uploads: int = 0
    bytes: int = 0
    removed: int = 0
    strict: bool = False
    timed_out: bool = False
    targets: tuple[TargetCounts, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """Every file written was uploaded (nothing failed, nothing abandoned)."""
        return self.failed == 0 and self.pending_abandoned == 0

    @property
    def fails_job(self) -> bool:
        """Whether ``train`` should fail the job because of this sync (only with SMTK_SYNC_STRICT=1)."""
        return self.strict and not self.complete

    def summary(self) -> str:
        """One log line."""
        where = ", ".join(f"{t.name} -> {t.destination}" for t in self.targets) or "S3"
        text = (
            f"S3 sync ({where}): {self.uploaded} files uploaded ({self.uploads} uploads, "
            f"{human_size(self.bytes)}), {self.failed} failed, {self.pending_abandoned} abandoned; "
            f"final flush took {self.seconds:.2f} s"
        )
        if self.removed:
            text += f"; {self.removed} renamed-away names removed"
        if self.timed_out:
            text += " (flush deadline reached)"
        return text


@dataclass(frozen=True)
class RestoreReport:
    """The outcome of :func:`smtk.sync.restore_checkpoints`."""

    source: str
    local_path: str
    downloaded: int
    kept: int
    bytes: int
    seconds: float
    failed: int = 0
    errors: tuple[str, ...] = ()

    def summary(self) -> str:
        text = (
            f"checkpoints restored from {self.source} to {self.local_path}: {self.downloaded} files "
            f"({human_size(self.bytes)}) downloaded, {self.kept} already present, in {self.seconds:.2f} s"
        )
        if self.failed:
            text += f"; {self.failed} failed"
        return text
