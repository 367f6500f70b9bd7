"""The exception hierarchy of smtk.

Every error smtk raises on purpose is an :class:`SmtkError`. Each class carries the
exit status ``train`` uses for it (CONTRACT.md section 6) and renders as one line a
user can act on: what was being read, which key, what was expected and what was found.

::

    SmtkError (1)
    ├── ConfigError (2)        a config file or setting is malformed
    ├── EntryPointError (2)    no program to run, or an invalid one
    ├── ArchiveError (2)       sagemaker_submit_directory is unsafe or unreadable
    ├── InstallError (3)       requirements.txt / package install failed
    ├── ClusterError (4)       peers never became ready
    ├── ChannelError (1)       a data channel cannot be read (raised inside user code)
    └── SyncError (1)          S3 sync could not be set up
"""

from __future__ import annotations

from typing import ClassVar


class SmtkError(Exception):
    """Base class: a failure smtk understands, with a message a user can act on."""

    exit_status: ClassVar[int] = 1
    #: Short stable identifier, used in ``failure.json`` (kebab-case).
    reference: ClassVar[str] = "smtk-error"
    #: Whether re-running the same job unchanged may succeed.
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(SmtkError):
    """A configuration file, hyperparameter or setting is malformed.

    The message names the file (or variable), the key, what was expected and what
    was found, e.g. ``resourceconfig.json: key 'hosts': expected a non-empty list of
    strings, found 42``.
    """

    exit_status = 2
    reference = "config-error"

    def __init__(
        self,
        source: str,
        key: str | None,
        expected: str,
        found: object,
        *,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        self.found = found
        where = f"{source}: key {key!r}" if key is not None else source
        found_text = found if isinstance(found, str) and found.startswith("<") else _short_repr(found)
        super().__init__(f"{where}: expected {expected}, found {found_text}", hint=hint)


class EntryPointError(SmtkError):
    """The user's entry point is missing, invalid or cannot be started."""

    exit_status = 2
    reference = "entry-point-error"


class ArchiveError(SmtkError):
    """The code archive (``sagemaker_submit_directory``) is unsafe or cannot be read."""

    exit_status = 2
    reference = "archive-error"


class InstallError(SmtkError):
    """Installing the user's requirements or package failed."""

    exit_status = 3
    reference = "install-error"
    retryable = True


class ClusterError(SmtkError):
    """Peer hosts of a distributed job never became ready."""

    exit_status = 4
    reference = "cluster-error"
    retryable = True


class ChannelError(SmtkError):
    """A data channel cannot be opened or read (FIFO missing, truncated record, ...)."""

    exit_status = 1
    reference = "channel-error"


class SyncError(SmtkError):
    """Output or checkpoint synchronisation to S3 cannot be set up."""

    exit_status = 1
    reference = "sync-error"


def _short_repr(value: object, limit: int = 120) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
