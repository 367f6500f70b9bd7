"""Input channels: File, FastFile and Pipe mode, record readers, a PyTorch dataset.

::

    import smtk.channels

    train = smtk.channels.get("train")          # or smtk.Environment().channels["train"]
    train.mode, train.path, train.content_type, train.record_wrapper
    for path in train.files():                  # File / FastFile
        ...
    for epoch in train.epochs(count=3):         # Pipe (also works in File mode)
        for record in epoch.records("recordio"):
            ...

Modules: :mod:`~smtk.channels.channel` (``Channel``), :mod:`~smtk.channels.pipe` (FIFO
epochs), :mod:`~smtk.channels.records` (RecordIO, TFRecord, lines, manifests),
:mod:`~smtk.channels.recordio_protobuf` (RecordIO-protobuf to numpy/scipy and back;
needs the ``protobuf`` extra), :mod:`~smtk.channels.crc32c`, :mod:`~smtk.channels.torch`
(``ChannelDataset``; imports torch only when used). User guide: ``docs/channels.md``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from typing import Protocol

from smtk.channels.channel import Channel, FileEpoch
from smtk.channels.pipe import FifoTimeoutError, PipeEpoch
from smtk.channels.recordio_protobuf import RecordBatch, read_protobuf, write_protobuf
from smtk.channels.records import RecordError, open_records
from smtk.config import ChannelConfig, read_input_data_config
from smtk.errors import ChannelError
from smtk.paths import Paths

__all__ = [
    "Channel",
    "ChannelMap",
    "FifoTimeoutError",
    "FileEpoch",
    "PipeEpoch",
    "RecordBatch",
    "RecordError",
    "HasChannels",
    "UnknownChannelError",
    "get",
    "open_records",
    "read_protobuf",
    "write_protobuf",
]


class UnknownChannelError(ChannelError, KeyError):
    """No channel of that name in ``inputdataconfig.json`` (also a ``KeyError``)."""

    reference = "unknown-channel"


class ChannelMap(Mapping[str, Channel]):
    """The job's channels by name; an unknown name raises :class:`UnknownChannelError`."""

    def __init__(
        self, configs: Mapping[str, ChannelConfig], paths: Paths, environ: Mapping[str, str] | None = None
    ) -> None:
        self._configs = dict(configs)
        self._paths = paths
        self._environ = dict(os.environ if environ is None else environ)
        self._cache: dict[str, Channel] = {}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ChannelMap:
        """The channels of the tree ``$SAGEMAKER_BASE_DIR`` (else ``/opt/ml``) names."""
        env = dict(os.environ if environ is None else environ)
        paths = Paths.from_environ(env)
        _, configs = read_input_data_config(paths.input_data_config_file)
        return cls(configs, paths, env)

    def __getitem__(self, name: str) -> Channel:
        channel = self._cache.get(name)
        if channel is None:
            config = self._configs.get(name)
            if config is None:
                raise UnknownChannelError(_unknown_message(self._paths, name, sorted(self._configs)))
            channel = Channel(config, self._paths.channel_dir(name), self._environ)
            self._cache[name] = channel
        return channel

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __repr__(self) -> str:
        return f"ChannelMap({list(self._configs)})"


class HasChannels(Protocol):
    """What :func:`get` needs of an environment (``smtk.Environment`` is one)."""

    @property
    def channels(self) -> Mapping[str, Channel]: ...


def get(name: str, env: HasChannels | None = None) -> Channel:
    """The channel ``name`` of ``env`` (default: the job of this process's environment)."""
    channels = env.channels if env is not None else ChannelMap.from_environ()
    return channels[name]


def _unknown_message(paths: Paths, name: str, known: list[str]) -> str:
    config_file = paths.input_data_config_file
    listed = ", ".join(repr(k) for k in known) if known else "no channels"
    parts = [f"no channel named {name!r}: {config_file} lists {listed}"]
    path = paths.channel_dir(name)
    if os.path.isdir(path):
        parts.append(f"(a directory {path} exists, but the config does not list it)")
    elif _is_fifo(path + "_0"):
        parts.append(f"(a FIFO {path}_0 exists, but the config does not list the channel)")
    match = re.fullmatch(r"(.+)_(\d+)", name)
    if match and match.group(1) in known:
        parts.append(
            f"; {name!r} looks like the FIFO of epoch {match.group(2)} of channel {match.group(1)!r}: "
            f"use get({match.group(1)!r}).epoch({match.group(2)})"
        )
    return " ".join(parts)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False
