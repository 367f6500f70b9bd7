"""The job's artifacts as the platform stores them: ``model.tar.gz`` and ``output.tar.gz``.

When a job has an output path (the spec's ``OutputDataConfig.S3OutputPath`` or
``smtk local --output-path``), SageMaker packs ``/opt/ml/model`` into
``<path>/<job name>/output/model.tar.gz`` and ``/opt/ml/output/data`` into
``output.tar.gz`` beside it. ``smtk local`` does the same after the job ends,
whatever the outcome (the platform uploads what a failed job left too):

- **Several hosts** are merged as the platform and the SDK's local mode merge them:
  host by host in order, a later host's file replacing an earlier one's of the same
  name. Files are at the archive's root (``model.tar.gz`` holds ``model.pt``, not
  ``model/model.pt``), symbolic links are followed (as the SDK's ``create_tar_file``
  does); FIFOs, sockets and devices are left out with a warning, never opened.
- **Fast gzip.** Model weights hardly compress, and zlib spends ~30 MB/s of one core
  finding that out: 2 GB of weights took over a minute. With ``isal`` (Intel's ISA-L,
  gzip-compatible output) installed, packing runs at several hundred MB/s;
  without it, the standard library's gzip (level 6) is used.
- **Destinations:** ``s3://bucket/prefix`` (uploaded through :class:`~smtk.s3.engine.Engine`,
  with progress), ``file:///dir`` or a plain directory (written under a temporary
  name, then renamed). The SDK's local mode writes ``file://`` outputs straight into the
  directory, without ``<job name>/output``; smtk keeps the platform's layout everywhere.
- A stop ends packing between two 1 MiB reads and cancels the upload
  (:class:`~smtk.stop.Stopped`).

::

    artifacts = store_artifacts(roots, "s3://bucket/out", "my-job", environ, settings.s3, stop=stop)
    artifacts[0].location   # s3://bucket/out/my-job/output/model.tar.gz
"""

from __future__ import annotations

import gzip
import logging
import os
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, cast
from urllib.parse import urlparse

from smtk.progress import Progress
from smtk.s3 import parse_s3_uri
from smtk.s3.engine import Engine
from smtk.s3.retry import Aborted, describe
from smtk.settings import S3Settings
from smtk.stop import Stop

log = logging.getLogger("smtk")

MODEL = "model.tar.gz"
OUTPUT = "output.tar.gz"
#: Read size while packing (a stop is looked at between two reads).
_CHUNK = 1024 * 1024


class ArtifactError(Exception):
    """The artifacts could not be packed or stored (names the file, directory or URI)."""


@dataclass(frozen=True)
class Artifact:
    """One stored archive."""

    name: str
    #: Where it is: ``s3://...`` or an absolute path.
    location: str
    files: int
    #: Bytes of the files packed, and of the archive.
    size: int
    packed: int
    seconds: float


def destination(output_path: str, job_name: str) -> str:
    """``<output path>/<job name>/output`` as an ``s3://`` URI or an absolute directory."""
    parsed = urlparse(output_path)
    if parsed.scheme == "s3":
        prefix = parsed.path.strip("/")
        return f"s3://{parsed.netloc}/" + "/".join(p for p in (prefix, job_name, "output") if p)
    if parsed.scheme == "file":
        path = (parsed.netloc + parsed.path) or "/"
    elif parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # a path (or a Windows drive)
        path = output_path
    else:
        raise ArtifactError(f"output path {output_path!r}: expected s3://, file:// or a directory")
    return os.path.join(os.path.abspath(path), job_name, "output")


def collect(roots: Sequence[str]) -> dict[str, str]:
    """Relative name -> path of every directory and file under ``roots`` (later roots win)."""
    entries: dict[str, str] = {}
    for root in roots:
        if not os.path.isdir(root):
            continue
        for parent, dirs, files in os.walk(root):
            rel_parent = os.path.relpath(parent, root)
            for name in sorted(dirs) + sorted(files):
                rel = name if rel_parent == "." else f"{rel_parent}/{name}"
                entries[rel] = os.path.join(parent, name)
    return entries


def _gzip_writer(path: str) -> IO[bytes]:
    try:
        from isal import igzip
    except ImportError:
        return cast(IO[bytes], gzip.GzipFile(path, "wb", compresslevel=6))
    return cast(IO[bytes], igzip.open(path, "wb", compresslevel=1))  # type: ignore[no-untyped-call]


class _Counted:
    """A file read in chunks, counted for the progress line and stopped between chunks."""

    def __init__(self, handle: IO[bytes], counted: Callable[[int], None], check: Callable[[], None]) -> None:
        self._handle = handle
        self._counted = counted
        self._check = check

    def read(self, size: int = -1) -> bytes:
        self._check()
        data = self._handle.read(min(size, _CHUNK) if size >= 0 else _CHUNK)
        self._counted(len(data))
        return data


def pack(
    entries: Mapping[str, str], target: str, *, label: str, stop: Stop | None = None, interval: float = 5.0
) -> tuple[int, int]:
    """Write ``entries`` (name -> path) to the gzip'd tar ``target``; returns (files, bytes)."""
    members: list[tuple[str, str, os.stat_result]] = []
    total = 0
    for name in sorted(entries):
        path = entries[name]
        try:
            st = os.stat(path)  # follows links, as the SDK's archives do
        except OSError as exc:
            log.warning("%s: leaving out %s (%s)", label, path, exc.strerror or exc)
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
        elif not stat.S_ISDIR(st.st_mode):
            log.warning("%s: leaving out %s (not a regular file or directory)", label, path)
            continue
        members.append((name, path, st))
    progress = Progress(label, log, interval=interval)
    progress.expect(files=sum(1 for _, _, st in members if stat.S_ISREG(st.st_mode)), size=total)

    def check() -> None:
        if stop is not None:
            stop.check(during=label)

    files = 0
    with (
        progress,
        _gzip_writer(target) as raw,
        tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path, st in members:
            check()
            info = tar.gettarinfo(path, arcname=name)
            if info.issym() or info.islnk():  # gettarinfo lstat's: describe the target
                info = _info_of(name, st)
            if stat.S_ISDIR(st.st_mode):
                info.type, info.size = tarfile.DIRTYPE, 0
                tar.addfile(info)
                continue
            info.size = st.st_size
            with open(path, "rb") as handle:
                tar.addfile(info, _Counted(handle, progress.advance, check))
            progress.file_done()
            files += 1
    return files, total


def _info_of(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.type = tarfile.DIRTYPE if stat.S_ISDIR(st.st_mode) else tarfile.REGTYPE
    return info


def store_artifacts(
    hosts: Sequence[str],
    output_path: str,
    job_name: str,
    environ: Mapping[str, str],
    settings: S3Settings,
    *,
    stop: Stop | None = None,
    staging_dir: str | None = None,
) -> list[Artifact]:
    """Pack every host tree's ``model`` and ``output/data`` and store them under the output path.

    ``hosts`` are the hosts' ``/opt/ml`` roots in host order; ``staging_dir`` (the job
    directory) holds the archives on their way to S3. Raises :class:`ArtifactError`, or
    :class:`~smtk.stop.Stopped` when a stop arrives.
    """
    where = destination(output_path, job_name)
    remote = where.startswith("s3://")
    sources = {
        MODEL: [os.path.join(root, "model") for root in hosts],
        OUTPUT: [os.path.join(root, "output", "data") for root in hosts],
    }
    # Packed beside the final place (renamed into it) or, for S3, in the job directory.
    stage_in = (staging_dir or tempfile.gettempdir()) if remote else where
    stored: list[Artifact] = []
    try:
        os.makedirs(stage_in, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".smtk-artifacts-", dir=stage_in) as staging:
            for name, roots in sources.items():
                started = time.monotonic()
                local = os.path.join(staging, name)
                label = f"packing {name}"
                files, size = pack(
                    collect(roots), local, label=label, stop=stop, interval=settings.progress_seconds
                )
                packed = os.path.getsize(local)
                if remote:
                    location = f"{where}/{name}"
                    _upload(local, location, packed, environ, settings, stop)
                else:
                    location = os.path.join(where, name)
                    os.replace(local, location)
                stored.append(Artifact(name, location, files, size, packed, time.monotonic() - started))
    except OSError as exc:
        raise ArtifactError(f"storing the job's artifacts in {where}: {exc}") from exc
    return stored


def _upload(
    path: str, uri: str, size: int, environ: Mapping[str, str], settings: S3Settings, stop: Stop | None
) -> None:
    target = parse_s3_uri(uri)
    engine = Engine(environ, settings)
    cancelled = threading.Event()
    remove = stop.on_stop(lambda _signum: cancelled.set()) if stop is not None else None
    progress = Progress(f"uploading {os.path.basename(path)}", log, interval=settings.progress_seconds)
    progress.expect(files=1, size=size)
    try:
        with progress:
            engine.complete(
                lambda: engine.upload(path, target.bucket, target.key, size=size, progress=progress.advance),
                cancelled,
            )
    except Aborted:
        if stop is not None:
            stop.check(during=f"uploading {uri}")
        raise
    except Exception as exc:
        raise ArtifactError(f"uploading {uri}: {describe(exc)}") from exc
    finally:
        if remove is not None:
            remove()
        engine.close(cancel=True, wait=not cancelled.is_set())
