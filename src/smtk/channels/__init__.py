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
:mod:`~smtk.channels.crc32c`, :mod:`~smtk.channels.torch` (``ChannelDataset``; imports
torch only when used). User guide: ``docs/channels.md``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from smtk.channels.channel import Channel, FileEpoch
from smtk.channels.pipe import FifoTimeoutError, PipeEpoch
from smtk.channels.records import RecordError, open_records
from smtk.errors import ChannelError

if TYPE_CHECKING:
    from smtk.environment import Environment

__all__ = [
    "Channel",
    "ChannelMap",
    "FifoTimeoutError",
    "FileEpoch",
    "PipeEpoch",
    "RecordError",
    "UnknownChannelError",
    "channels_of",
    "get",
    "open_records",
]


class UnknownChannelError(ChannelError, KeyError):
    """No channel of that name in ``inputdataconfig.json`` (also a ``KeyError``)."""

    reference = "unknown-channel"


class ChannelMap(Mapping[str, Channel]):
    """The job's channels by name; an unknown name raises :class:`UnknownChannelError`."""

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._configs = env.channel_configs
        self._cache: dict[str, Channel] = {}

    def __getitem__(self, name: str) -> Channel:
        channel = self._cache.get(name)
        if channel is None:
            config = self._configs.get(name)
            if config is None:
                raise UnknownChannelError(_unknown_message(self._env, name, sorted(self._configs)))
            channel = Channel(config, self._env.paths.channel_dir(name), self._env.environ)
            self._cache[name] = channel
        return channel

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __repr__(self) -> str:
        return f"ChannelMap({list(self._configs)})"


def channels_of(env: Environment) -> ChannelMap:
    """The channels of ``env`` (what ``Environment.channels`` returns)."""
    return ChannelMap(env)


def get(name: str, env: Environment | None = None) -> Channel:
    """The channel ``name`` of ``env`` (default: ``Environment()`` of this process)."""
    if env is None:
        from smtk.environment import Environment

        env = Environment()
    return channels_of(env)[name]


def _unknown_message(env: Environment, name: str, known: list[str]) -> str:
    config_file = env.paths.input_data_config_file
    listed = ", ".join(repr(k) for k in known) if known else "no channels"
    parts = [f"no channel named {name!r}: {config_file} lists {listed}"]
    path = env.paths.channel_dir(name)
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
