"""Putting the user's code into the code dir: ``sagemaker_submit_directory``.

Sources, as the reference accepts them:

- ``s3://bucket/key.tar.gz``: downloaded (:mod:`smtk.s3.engine`: in parallel parts when
  large, with progress lines; ``S3_ENDPOINT_URL``, ``AWS_REGION``, ``SAGEMAKER_REGION``
  honoured) to a temporary file, then unpacked;
- a local ``.tar``/``.tar.gz``/``.tgz`` (any tar the :mod:`tarfile` module reads);
- a local directory: copied (nothing to do when it *is* the code dir);
- any other local file: copied into the code dir;
- absent: nothing to do (the code is baked into the image).

Like the reference, nothing is unpacked when the code dir already has entries: code
baked into the image wins. smtk logs a warning naming both, instead of an INFO line.

Unpacking is safe (CONTRACT.md section 4). Every member is checked *before* anything
is written, and one unsafe member rejects the whole archive with an
:class:`~smtk.errors.ArchiveError` naming it: absolute names, ``..`` segments, links
whose target leaves the tree (followed through the archive's own links), members
written through a link, hard links to anything but an earlier regular file, devices
and FIFOs. ``SMTK_CODE_MAX_MEMBERS`` and ``SMTK_CODE_MAX_BYTES`` stop tar bombs. The
stdlib ``data`` filter then runs too, as a second layer; it also drops set-uid bits
and ownership. If writing fails half way, what was written is removed again.

::

    from smtk.codefetch import fetch_code
    report = fetch_code(env)     # None when there is nothing to fetch
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtk.errors import ArchiveError, ConfigError
from smtk.files import describe, is_regular
from smtk.log import logger
from smtk.progress import Progress, human_size
from smtk.redact import redact_url
from smtk.s3 import parse_s3_uri
from smtk.s3.engine import Engine
from smtk.s3.retry import Aborted, error_code
from smtk.s3.retry import describe as describe_error
from smtk.settings import S3Settings, Settings
from smtk.stop import Stop

if TYPE_CHECKING:
    import tarfile

    from smtk.environment import Environment

SourceKind = Literal["s3", "tar", "dir", "file"]

#: Defaults of the tar-bomb limits (overridable with the SMTK_* variables below).
DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_BYTES = 20 * 1024**3
MAX_MEMBERS_ENV = "SMTK_CODE_MAX_MEMBERS"
MAX_BYTES_ENV = "SMTK_CODE_MAX_BYTES"
_MAX_LINK_DEPTH = 40


@dataclass(frozen=True)
class FetchReport:
    """What :func:`fetch_code` did."""

    source: str
    kind: SourceKind
    code_dir: str
    #: Whether the code dir already held code, so the source was left alone.
    skipped: bool = False
    #: Entries written (files, directories, links).
    members: int = 0
    #: Bytes of regular files written (uncompressed).
    bytes: int = 0
    #: Bytes downloaded from S3.
    downloaded: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Limits:
    """Bounds on what one archive may unpack to."""

    max_members: int = DEFAULT_MAX_MEMBERS
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.code_max_members, settings.code_max_bytes)


def fetch_code(env: Environment, stop: Stop | None = None) -> FetchReport | None:
    """Put ``sagemaker_submit_directory`` into the code dir; ``None`` when there is none.

    A download from S3 ends at once on a stop (:class:`~smtk.stop.Stopped`).
    """
    source = env.reserved_hyperparameters.get("sagemaker_submit_directory")
    if source is None or source == "":
        return None
    if not isinstance(source, str):
        raise ConfigError(
            "hyperparameters.json", "sagemaker_submit_directory", "an s3:// URI or a local path", source
        )
    return fetch(
        source,
        env.paths.code_dir,
        env.environ,
        Limits.from_settings(env.settings),
        stop=stop,
        s3=env.settings.s3,
    )


def fetch(
    source: str,
    code_dir: str,
    environ: Mapping[str, str],
    limits: Limits | None = None,
    *,
    stop: Stop | None = None,
    s3: S3Settings | None = None,
) -> FetchReport | None:
    """Put ``source`` into ``code_dir`` (see the module docstring for the rules)."""

    started = time.monotonic()
    shown = redact_url(source)
    limits = limits or Limits()
    is_s3 = source.startswith("s3://")
    if source.startswith("file://"):
        source = source[len("file://") :]
    if not is_s3 and os.path.isdir(source) and _same_dir(source, code_dir):
        logger.info("code: sagemaker_submit_directory is the code dir %s; nothing to fetch", code_dir)
        return None
    os.makedirs(code_dir, exist_ok=True)
    existing = os.listdir(code_dir)
    if existing:
        # The reference's rule, kept for compatibility: image-baked code wins.
        logger.warning(
            "code: %s already has %d entries (%s); using them, NOT unpacking sagemaker_submit_directory=%s",
            code_dir,
            len(existing),
            ", ".join(sorted(existing)[:5]) + (", ..." if len(existing) > 5 else ""),
            shown,
        )
        guess: SourceKind = "s3" if is_s3 else "dir" if os.path.isdir(source) else "tar"
        return FetchReport(shown, guess, code_dir, skipped=True, seconds=time.monotonic() - started)

    kind: SourceKind = "s3" if is_s3 else _local_kind(source, shown)
    downloaded = 0
    if kind == "s3":
        with tempfile.TemporaryDirectory(prefix="smtk-code-") as tmp:
            archive = os.path.join(tmp, "sourcedir.tar.gz")
            downloaded = _download(source, archive, environ, stop, s3)
            members, size = extract_archive(archive, code_dir, limits, shown=shown)
    elif kind == "tar":
        members, size = extract_archive(source, code_dir, limits, shown=shown)
    elif kind == "dir":
        members, size = copy_tree(source, code_dir, limits)
    else:
        shutil.copy2(source, os.path.join(code_dir, os.path.basename(source)))
        members, size = 1, os.path.getsize(source)
    seconds = time.monotonic() - started
    logger.info(
        "code: unpacked %s into %s (%d entries, %s) in %.2fs",
        shown,
        code_dir,
        members,
        human_size(size),
        seconds,
    )
    return FetchReport(
        shown, kind, code_dir, members=members, bytes=size, downloaded=downloaded, seconds=seconds
    )


# -- validation --------------------------------------------------------------------------


def check_members(members: Iterable[tarfile.TarInfo], limits: Limits, shown: str) -> list[tarfile.TarInfo]:
    """Every member of an archive, checked; :class:`ArchiveError` on the first unsafe one.

    Consumes ``members`` lazily, so a tar bomb stops at the member count limit.
    """
    checked: list[tarfile.TarInfo] = []
    total = 0
    for member in members:
        if len(checked) >= limits.max_members:
            raise ArchiveError(
                f"{shown}: more than {limits.max_members} members",
                hint=f"raise {MAX_MEMBERS_ENV} if this archive is genuine",
            )
        parts = _member_parts(member.name)
        if parts is None:
            reason = "is an absolute path" if member.name.startswith("/") else "has a '..' segment"
            raise _reject(shown, member, reason)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise _reject(shown, member, f"is a {_type_name(member)}, which is never unpacked")
        if member.isreg():
            total += member.size
            if total > limits.max_bytes:
                raise ArchiveError(
                    f"{shown}: unpacks to more than {human_size(limits.max_bytes)}",
                    hint=f"raise {MAX_BYTES_ENV} if this archive is genuine",
                )
        checked.append(member)

    links = {
        "/".join(parts): member.linkname
        for member in checked
        if member.issym() and (parts := _member_parts(member.name))
    }
    regular_seen: set[str] = set()
    for member in checked:
        parts = _member_parts(member.name) or []
        key = "/".join(parts)
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in links:
                raise _reject(shown, member, f"would be written through the link {'/'.join(parts[:depth])!r}")
        if member.issym():
            if member.linkname.startswith("/"):
                raise _reject(shown, member, f"links to the absolute path {member.linkname!r}")
            if _resolve(parts[:-1] + member.linkname.split("/"), links) is None:
                raise _reject(shown, member, f"links to {member.linkname!r}, outside the code dir")
        elif key in links:
            raise _reject(shown, member, "replaces a symbolic link of the same name")
        if member.islnk():
            target = _member_parts(member.linkname)
            if target is None:
                raise _reject(shown, member, f"hard-links to {member.linkname!r}, outside the code dir")
            if "/".join(target) not in regular_seen:
                raise _reject(
                    shown, member, f"hard-links to {member.linkname!r}, which is not an earlier regular file"
                )
        if member.isreg():
            regular_seen.add(key)
    return checked


def _member_parts(name: str) -> list[str] | None:
    """A member name as path segments (``.`` and empty ones dropped); ``None`` if unsafe."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _resolve(parts: list[str], links: Mapping[str, str], depth: int = 0) -> list[str] | None:
    """Where ``parts`` lands inside the archive's tree, following its links; ``None`` if outside."""
    if depth > _MAX_LINK_DEPTH:
        return None
    current: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return None
            current.pop()
            continue
        current.append(part)
        target = links.get("/".join(current))
        if target is not None:
            if target.startswith("/"):
                return None
            resolved = _resolve(current[:-1] + target.split("/"), links, depth + 1)
            if resolved is None:
                return None
            current = resolved
    return current


def _reject(shown: str, member: tarfile.TarInfo, reason: str) -> ArchiveError:
    return ArchiveError(
        f"{shown}: unsafe member {member.name!r} {reason}; nothing was unpacked",
        hint="rebuild the archive from the code directory itself (tar -czf sourcedir.tar.gz -C code .)",
    )


def _type_name(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"member of type {member.type!r}"


# -- writing -----------------------------------------------------------------------------


def extract_archive(
    archive: str, code_dir: str, limits: Limits, *, shown: str | None = None
) -> tuple[int, int]:
    """Unpack the tar file ``archive`` into the empty ``code_dir``; (entries, bytes)."""

    shown = shown or archive
    with _open_tar(archive, shown) as tar:
        try:
            members = check_members(tar, limits, shown)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(f"{shown}: corrupt or truncated tar archive ({exc})") from exc
        with _cleanup_on_error(code_dir):
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(code_dir, members=members, filter="data")
                else:  # pragma: no cover - Python without the PEP 706 backport
                    for member in members:
                        member.mode = stat.S_IMODE(member.mode) & 0o755
                        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
                    tar.extractall(code_dir, members=members)
            except tarfile.FilterError as exc:
                raise ArchiveError(f"{shown}: unsafe member rejected while unpacking ({exc})") from exc
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise ArchiveError(f"{shown}: unpacking into {code_dir} failed ({exc})") from exc
    return len(members), sum(m.size for m in members if m.isreg())


def copy_tree(source: str, code_dir: str, limits: Limits) -> tuple[int, int]:
    """Copy the directory ``source`` into the empty ``code_dir`` with the archive rules."""

    root = os.path.realpath(source)
    entries: list[tuple[str, os.stat_result]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    raise ArchiveError(
                        f"{source}: unsafe entry {rel!r} links to {os.readlink(path)!r}, "
                        "outside the directory; nothing was copied"
                    )
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise ArchiveError(
                    f"{source}: unsafe entry {rel!r} is not a file, directory or link; nothing was copied"
                )
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
            entries.append((rel, info))
            if len(entries) > limits.max_members:
                raise ArchiveError(
                    f"{source}: more than {limits.max_members} entries", hint=f"raise {MAX_MEMBERS_ENV}"
                )
            if total > limits.max_bytes:
                raise ArchiveError(
                    f"{source}: more than {human_size(limits.max_bytes)}", hint=f"raise {MAX_BYTES_ENV}"
                )
    with _cleanup_on_error(code_dir):
        for rel, info in entries:
            src, dst = os.path.join(root, rel), os.path.join(code_dir, rel)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(src)
                if os.path.isabs(target):  # keep it pointing into the copy, not the source
                    target = os.path.relpath(os.path.realpath(src), os.path.dirname(os.path.join(root, rel)))
                os.symlink(target, dst)
            elif stat.S_ISDIR(info.st_mode):
                os.mkdir(dst, (stat.S_IMODE(info.st_mode) & 0o755) | stat.S_IRWXU)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
                # as the data filter does: no set-uid/set-gid/sticky, no group/other write
                os.chmod(dst, stat.S_IMODE(info.st_mode) & 0o755)
    return len(entries), total


def _open_tar(archive: str, shown: str) -> tarfile.TarFile:

    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{shown}: cannot be read as a tar archive ({exc})") from exc


@contextlib.contextmanager
def _cleanup_on_error(code_dir: str) -> Iterator[None]:
    """Empty ``code_dir`` again (it was empty before) if the block raises."""

    try:
        yield
    except BaseException:
        for name in os.listdir(code_dir):
            path = os.path.join(code_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        raise


# -- sources -----------------------------------------------------------------------------


def _local_kind(source: str, shown: str) -> SourceKind:

    if os.path.isdir(source):
        return "dir"
    if not os.path.exists(source):
        raise ArchiveError(
            f"sagemaker_submit_directory {shown}: no such file or directory",
            hint="give an s3://bucket/key.tar.gz URI, a local tar file or a local directory",
        )
    if not is_regular(source):
        # Opening a FIFO would wait for a writer forever; a device may never end.
        raise ArchiveError(
            f"sagemaker_submit_directory {shown}: is {describe(source)}, not a tar file or a directory",
            hint="give an s3://bucket/key.tar.gz URI, a local tar file or a local directory",
        )
    if tarfile.is_tarfile(source):
        return "tar"
    if source.endswith((".tar", ".tar.gz", ".tgz")):
        raise ArchiveError(f"sagemaker_submit_directory {shown}: not a readable tar archive")
    return "file"


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


_DOWNLOAD_REASONS = {
    "404": "no such object",
    "NoSuchKey": "no such object",
    "NotFound": "no such object",
    "NoSuchBucket": "no such bucket",
    "403": "access denied (check the role's s3:GetObject permission)",
    "AccessDenied": "access denied (check the role's s3:GetObject permission)",
    "Forbidden": "access denied (check the role's s3:GetObject permission)",
}


def _download(
    uri: str,
    destination: str,
    environ: Mapping[str, str],
    stop: Stop | None = None,
    settings: S3Settings | None = None,
) -> int:
    """Download ``uri`` to ``destination`` (in parallel parts when large, with progress
    lines); its size. Errors name the URI. A stop cancels the download and raises
    :class:`~smtk.stop.Stopped` (the caller's :meth:`Stop.call` has already returned)."""
    location = parse_s3_uri(uri, "hyperparameters.json", "sagemaker_submit_directory")
    if not location.key or location.key.endswith("/"):
        raise ArchiveError(
            f"sagemaker_submit_directory {uri}: expected s3://bucket/key.tar.gz, found no object key"
        )
    settings = settings or S3Settings()
    engine = Engine(environ, settings)
    cancelled = threading.Event()
    remove = stop.on_stop(lambda _signum: cancelled.set()) if stop is not None else None
    try:
        size = int(engine.client.head_object(Bucket=location.bucket, Key=location.key)["ContentLength"])
        logger.info("code: downloading %s (%s)", uri, human_size(size))
        progress = Progress("code", logger, interval=settings.progress_seconds)
        progress.expect(files=1, size=size)
        with progress:
            engine.complete(
                lambda: engine.download(
                    location.bucket, location.key, destination, size=size, progress=progress.advance
                ),
                cancelled,
            )
    except Aborted:
        if stop is not None:
            stop.check(during="downloading the code")
        raise
    except Exception as exc:
        code = error_code(exc)
        reason = _DOWNLOAD_REASONS.get(code) or describe_error(exc)
        raise ArchiveError(f"sagemaker_submit_directory {uri}: cannot download: {reason}") from exc
    finally:
        if remove is not None:
            remove()
        engine.close(cancel=True, wait=not cancelled.is_set())
    return size
