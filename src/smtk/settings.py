"""Every ``SMTK_*`` setting, read once into one typed, validated snapshot.

This is the only module that reads ``SMTK_*`` variables. :meth:`Settings.from_environ`
reads them all at once and checks each with one error style: a value that cannot be
used is a :class:`~smtk.errors.ConfigError` naming the variable, what was expected and
what was found (``SMTK_GRACE_PERIOD: expected a number >= 0, found 'soon'``), so a bad
setting fails the job at its start (exit status 2), never half way through. Unset or
blank means the default. ``docs/environment-variables.md`` lists every one of them.

::

    settings = Settings.from_environ(os.environ)       # or env.settings
    settings.grace_period, settings.sync.workers, settings.host_addresses

Besides the settings users set, the snapshot carries what ``train`` tells the processes
it starts about the job (``SMTK_LAUNCHER``, ``SMTK_MASTER_HOST``), which smtk's own
helpers (the rank wrapper) read back from their environment.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, cast

from smtk.errors import ConfigError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

IntermediateMode = Literal["auto", "on", "off"]
WatchMode = Literal["auto", "inotify", "poll"]
LocalHostsMode = Literal["auto", "netns", "loopback"]
#: Where ``train`` runs (``SMTK_SCHEDULER``): ``auto`` detects it (see smtk.scheduler.detect).
SCHEDULERS = ("auto", "sagemaker", "slurm", "kubernetes")


# -- one value -------------------------------------------------------------------------------


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return None if value is None or not value.strip() else value


def number(environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    """A finite number ``>= minimum`` (seconds, sizes, ...)."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(name, None, f"a number >= {minimum:g}", raw)
    return value


def integer(environ: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    """A whole number ``>= minimum``."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.lstrip("+-").isdigit() or len(text) > 30:
        raise ConfigError(name, None, f"an integer >= {minimum}", raw)
    value = int(text)
    if value < minimum:
        raise ConfigError(name, None, f"an integer >= {minimum}", raw)
    return value


def flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(name, None, "1/true/yes/on or 0/false/no/off", raw)


def _pip_cache(raw: str | None) -> str:
    text = (raw or "").strip()
    if text.lower() in ("off", "0", "none", "false", "no"):
        return ""
    return text or "~/.cache/smtk/pip"


def choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (compared in lower case)."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text not in choices:
        raise ConfigError(name, None, " or ".join(repr(c) for c in choices), raw)
    return text


def port(environ: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port, 1-65535."""
    value = integer(environ, name, default, minimum=1)
    if value > 65535:
        raise ConfigError(name, None, "a TCP port (1-65535)", environ.get(name))
    return value


def words(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A command line or options, split like a shell would (``shlex``)."""
    raw = environ.get(name, "")
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(name, None, "options quoted as in a shell", f"<{exc}>") from None


def log_level_setting(environ: Mapping[str, str]) -> str | None:
    """``SMTK_LOG_LEVEL`` as given (the logger reads it before anything else is checked)."""
    return _raw(environ, "SMTK_LOG_LEVEL")


def log_format_setting(environ: Mapping[str, str]) -> str:
    """``SMTK_LOG_FORMAT``: ``json`` for one JSON object per smtk log line, else ``text``."""
    raw = _raw(environ, "SMTK_LOG_FORMAT")
    return "json" if raw is not None and raw.strip().lower() == "json" else "text"


def scheduler_setting(environ: Mapping[str, str]) -> str:
    """``SMTK_SCHEDULER``: ``auto`` (default), ``sagemaker``, ``slurm`` or ``kubernetes``.

    Read on its own, before anything else, by ``train``'s detection of where it runs.
    """
    return choice(environ, "SMTK_SCHEDULER", SCHEDULERS, "auto")


def is_set(environ: Mapping[str, str], name: str) -> bool:
    """Whether the user set ``name`` (to something not blank)."""
    return _raw(environ, name) is not None


#: The mark every supervised process carries (see :mod:`smtk.supervisor`).
SUPERVISED = "SMTK_SUPERVISED"


def supervised_mark(environ: Mapping[str, str]) -> str:
    """The supervision mark in ``environ`` (a process's own, or another's), ``""`` when none."""
    return environ.get(SUPERVISED) or ""


def host_addresses(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``SMTK_HOST_ADDRESSES`` (``algo-1=127.0.0.2,algo-2=127.0.0.3``) as host -> address."""
    text = environ.get("SMTK_HOST_ADDRESSES", "").strip()
    result: dict[str, str] = {}
    if not text:
        return MappingProxyType(result)
    for item in text.split(","):
        host, sep, address = item.strip().partition("=")
        if not sep or not host.strip() or not address.strip():
            raise ConfigError("SMTK_HOST_ADDRESSES", None, "comma-separated host=address pairs", text)
        result[host.strip()] = address.strip()
    return MappingProxyType(result)


#: Most hosts a Kubernetes job may name through ``SMTK_HOST_COUNT`` (a typo guard: the
#: host list becomes ``SM_HOSTS``, which every process of the job carries).
MAX_HOST_COUNT = 10_000


def host_count(environ: Mapping[str, str]) -> int | None:
    """``SMTK_HOST_COUNT``: the hosts of a Kubernetes Indexed Job or JobSet job; ``None`` when unset."""
    if not is_set(environ, "SMTK_HOST_COUNT"):
        return None
    value = integer(environ, "SMTK_HOST_COUNT", 1, minimum=1)
    if value > MAX_HOST_COUNT:
        raise ConfigError("SMTK_HOST_COUNT", None, f"an integer from 1 to {MAX_HOST_COUNT}", value)
    return value


def host_domain(environ: Mapping[str, str]) -> str:
    """``SMTK_HOST_DOMAIN``: the DNS domain of a Kubernetes job's pod names; ``""`` for the default."""
    return (environ.get("SMTK_HOST_DOMAIN") or "").strip().lower()


# -- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncSettings:
    """How intermediate-output and checkpoint sync behave (``SMTK_SYNC_*``, see docs/sync.md)."""

    #: ``auto``: sync ``output/intermediate`` only when it did not exist at start (the
    #: reference's rule: an existing directory means the platform syncs it).
    intermediate: IntermediateMode = "auto"
    #: Sync ``checkpointconfig.json``'s ``LocalPath`` to its ``S3Uri`` (``smtk local`` turns it on).
    checkpoints: bool = False
    #: Concurrent uploads: each thread waits for its file while the client moves the bytes,
    #: so under real S3's 10-30 ms per request it is what bounds the files per second.
    workers: int = 32
    #: Wait after a file's close before uploading it (lets write-then-rename settle).
    debounce_seconds: float = 0.25
    #: How long a file's transient failures (connection refused, 5xx, throttling) are retried.
    retry_seconds: float = 900.0
    #: Longest wait between two retries of one file.
    retry_max_wait_seconds: float = 5.0
    #: ``auto``: inotify, falling back to scanning when watches run out; ``poll``: scan only.
    mode: WatchMode = "auto"
    #: Interval of the periodic scan in polling mode.
    poll_seconds: float = 2.0
    #: Files at least this large are uploaded in parts (multipart upload).
    multipart_threshold: int = 16 * 1024 * 1024
    #: Default bound of the final flush when the caller gives none.
    flush_seconds: float = 60.0
    #: Whether failed or abandoned uploads should fail the job.
    strict: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SyncSettings:
        return cls(
            intermediate=cast(
                IntermediateMode, choice(environ, "SMTK_SYNC_INTERMEDIATE", ("auto", "on", "off"), "auto")
            ),
            checkpoints=flag(environ, "SMTK_SYNC_CHECKPOINTS", default=False),
            workers=integer(environ, "SMTK_SYNC_WORKERS", 32, minimum=1),
            debounce_seconds=number(environ, "SMTK_SYNC_DEBOUNCE_MS", 250, minimum=0) / 1000.0,
            retry_seconds=number(environ, "SMTK_SYNC_RETRY_SECONDS", 900, minimum=0),
            mode=cast(WatchMode, choice(environ, "SMTK_SYNC_MODE", ("auto", "inotify", "poll"), "auto")),
            poll_seconds=number(environ, "SMTK_SYNC_POLL_SECONDS", 2, minimum=0.05),
            multipart_threshold=integer(environ, "SMTK_SYNC_MULTIPART_MB", 16, minimum=5) * 1024 * 1024,
            flush_seconds=number(environ, "SMTK_SYNC_FLUSH_SECONDS", 60, minimum=0),
            strict=flag(environ, "SMTK_SYNC_STRICT", default=False),
        )


S3ClientChoice = Literal["auto", "crt", "classic"]


@dataclass(frozen=True)
class S3Settings:
    """How smtk moves files to and from S3 (``SMTK_S3_*``, see docs/sync.md)."""

    #: ``auto``: AWS's CRT client where it applies, botocore's classic transfer manager
    #: otherwise; ``crt`` or ``classic``: that one (``crt`` still falls back where it cannot work).
    client: S3ClientChoice = "auto"
    #: Transfers in flight at once when downloading many objects (restore, channels).
    concurrency: int = 64
    #: Memory the CRT client may use for buffering parts.
    memory_limit: int = 1024 * 1024 * 1024
    #: Seconds between two progress lines of a long transfer.
    progress_seconds: float = 5.0
    #: Build plain CRT PUTs and GETs from a per-bucket template (:mod:`smtk.s3.templates`);
    #: off: botocore builds every request.
    templates: bool = True

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> S3Settings:
        return cls(
            client=cast(
                S3ClientChoice, choice(environ, "SMTK_S3_CLIENT", ("auto", "crt", "classic"), "auto")
            ),
            concurrency=integer(environ, "SMTK_S3_CONCURRENCY", 64, minimum=1),
            memory_limit=integer(environ, "SMTK_S3_MEMORY_MB", 1024, minimum=256) * 1024 * 1024,
            progress_seconds=number(environ, "SMTK_TRANSFER_PROGRESS_SECONDS", 5.0, minimum=0.1),
            templates=flag(environ, "SMTK_S3_TEMPLATES", default=True),
        )


@dataclass(frozen=True)
class PipeSettings:
    """How Pipe-mode epochs are opened and read (``SMTK_PIPE_*``, ``SMTK_CRC32C``)."""

    #: Seconds to wait for an epoch's FIFO and its first byte.
    timeout: float = 300.0
    #: Seconds a connected writer may send nothing before reading fails (0: wait, warning).
    stall_timeout: float = 0.0
    #: Pipe buffer to ask the kernel for (0 leaves it alone).
    buffer_size: int = 1 << 20
    #: ``python``: the pure-Python CRC32C even when the C extension is installed.
    crc32c: str = "auto"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PipeSettings:
        return cls(
            timeout=number(environ, "SMTK_PIPE_TIMEOUT", 300.0),
            stall_timeout=number(environ, "SMTK_PIPE_STALL_TIMEOUT", 0.0),
            buffer_size=int(number(environ, "SMTK_PIPE_BUFFER_SIZE", float(1 << 20))),
            crc32c=choice(environ, "SMTK_CRC32C", ("auto", "python"), "auto"),
        )


@dataclass(frozen=True)
class Settings:
    """Every ``SMTK_*`` setting of this process (see docs/environment-variables.md)."""

    # running the user's code
    #: Seconds between forwarding SIGTERM/SIGINT to the job's process group and SIGKILL.
    grace_period: float = 100.0
    #: Seconds the platform gives between its SIGTERM and its SIGKILL (the final flush fits in it).
    stop_window: float = 120.0
    #: Seconds between two shown states of a ``\\r`` progress bar.
    progress_interval: float = 10.0
    #: Reap every orphaned zombie, as ``train`` does when it is PID 1.
    reap_zombies: bool = False
    #: ``SMTK_LOG_LEVEL`` as given (a name or a number), ``None`` when unset.
    log_level: str | None = None
    #: ``compat`` or ``json`` rendering of hyperparameters in argv, ``None`` when unset.
    argv_format: str | None = None
    # preparing
    skip_requirements: bool = False
    pip_args: tuple[str, ...] = ()
    code_max_members: int = 100_000
    code_max_bytes: int = 20 * 1024**3
    # several hosts
    ready_timeout: float = 600.0
    master_port: int = 7777
    status_port: int = 7778
    ssh_port: int = 22
    #: ``SMTK_SSHD`` split like a shell would; empty: ``sshd`` from PATH.
    sshd: tuple[str, ...] = ()
    host_addresses: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Hosts of a Kubernetes Indexed Job or JobSet job (``None``: unset), and their DNS domain.
    host_count: int | None = None
    host_domain: str = ""
    #: torchrun's ``--max-restarts`` (the ``smtk_max_restarts`` hyperparameter wins).
    max_restarts: int = 0
    peer_abort_grace: float = 10.0
    outcome_linger: float = 30.0
    # side services
    sync: SyncSettings = field(default_factory=SyncSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    pipe: PipeSettings = field(default_factory=PipeSettings)
    # smtk local
    local_hosts: LocalHostsMode = "auto"
    local_peer_grace: float = 30.0
    container_engine: str = ""
    container_args: tuple[str, ...] = ()
    #: pip's cache mounted into --image containers ("" for none).
    local_pip_cache: str = "~/.cache/smtk/pip"
    # outside SageMaker (docs/outside-sagemaker.md)
    #: ``auto`` (detect), ``sagemaker``, ``slurm`` or ``kubernetes``.
    scheduler: str = "auto"
    #: The job spec file (CreateTrainingJob-shaped JSON, as ``smtk local`` reads) run under a scheduler.
    job_spec: str = ""
    #: Lay this host's tree out in ``<job_dir>/<host>`` ("": ``$SAGEMAKER_BASE_DIR`` or ``/opt/ml``).
    job_dir: str = ""
    # what train tells the processes it starts (read back by smtk's own helpers)
    launcher: str = ""
    master_host: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check every setting in ``environ``; :class:`ConfigError` on the first bad one."""
        return cls(
            grace_period=number(environ, "SMTK_GRACE_PERIOD", 100.0),
            stop_window=number(environ, "SMTK_STOP_WINDOW", 120.0),
            progress_interval=number(environ, "SMTK_PROGRESS_INTERVAL", 10.0),
            reap_zombies=flag(environ, "SMTK_REAP_ZOMBIES", default=False),
            log_level=_raw(environ, "SMTK_LOG_LEVEL"),
            argv_format=_raw(environ, "SMTK_ARGV_FORMAT"),
            skip_requirements=flag(environ, "SMTK_SKIP_REQUIREMENTS", default=False),
            pip_args=words(environ, "SMTK_PIP_ARGS"),
            code_max_members=integer(environ, "SMTK_CODE_MAX_MEMBERS", 100_000, minimum=1),
            code_max_bytes=integer(environ, "SMTK_CODE_MAX_BYTES", 20 * 1024**3, minimum=1),
            ready_timeout=number(environ, "SMTK_READY_TIMEOUT", 600.0),
            master_port=port(environ, "SMTK_MASTER_PORT", 7777),
            status_port=port(environ, "SMTK_STATUS_PORT", 7778),
            ssh_port=port(environ, "SMTK_SSH_PORT", 22),
            sshd=words(environ, "SMTK_SSHD"),
            host_addresses=host_addresses(environ),
            host_count=host_count(environ),
            host_domain=host_domain(environ),
            max_restarts=integer(environ, "SMTK_MAX_RESTARTS", 0),
            peer_abort_grace=number(environ, "SMTK_PEER_ABORT_GRACE", 10.0),
            outcome_linger=number(environ, "SMTK_OUTCOME_LINGER", 30.0),
            sync=SyncSettings.from_environ(environ),
            s3=S3Settings.from_environ(environ),
            pipe=PipeSettings.from_environ(environ),
            local_hosts=cast(
                LocalHostsMode, choice(environ, "SMTK_LOCAL_HOSTS", ("auto", "netns", "loopback"), "auto")
            ),
            local_peer_grace=number(environ, "SMTK_LOCAL_PEER_GRACE", 30.0),
            container_engine=(environ.get("SMTK_CONTAINER_ENGINE") or "").strip(),
            container_args=words(environ, "SMTK_CONTAINER_ARGS"),
            local_pip_cache=_pip_cache(environ.get("SMTK_LOCAL_PIP_CACHE")),
            scheduler=scheduler_setting(environ),
            job_spec=(environ.get("SMTK_JOB_SPEC") or "").strip(),
            job_dir=(environ.get("SMTK_JOB_DIR") or "").strip(),
            launcher=(environ.get("SMTK_LAUNCHER") or "").strip(),
            master_host=(environ.get("SMTK_MASTER_HOST") or "").strip(),
        )

    def address_of(self, host: str) -> str:
        """The address to use for ``host``: its ``SMTK_HOST_ADDRESSES`` mapping, else the name."""
        return self.host_addresses.get(host, host)
