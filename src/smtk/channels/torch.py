"""A PyTorch ``IterableDataset`` over a channel (importing this module imports torch).

``ChannelDataset`` reads one epoch per ``iter()`` and shards records so that, across
every distributed rank and every DataLoader worker, each record is read exactly once
per epoch. ``dataset.epoch`` is the epoch being read (also inside workers).

How records are split (a *consumer* is one DataLoader worker of one rank):

File / FastFile
    Every consumer lists the same files in the same order. ``shard="record"`` (default)
    hands record ``i`` to consumer ``i % consumers`` (balanced to within one record;
    every consumer parses every file). ``shard="file"`` hands whole files round-robin
    (no wasted parsing; uneven when files are few or differ in size). With
    ``FullyReplicated`` the consumers are all ranks' workers; with ``ShardedByS3Key``
    each host already holds its own files, so only the host's ranks share them.
Pipe
    A FIFO has exactly one reader, so each consumer on a host needs its own channel:
    pass one channel name per consumer (``["train_0", "train_1", ...]``, one per
    ``local_rank * num_workers + worker_id``) or use ``num_workers=0``/``1`` with one
    rank per host. With ``FullyReplicated`` and several hosts, every host receives the
    same stream, so host ``h`` of ``H`` keeps records ``i % H == h``.

Epochs: ``iter(dataset)`` reads ``dataset.next_epoch`` and advances it in the process
that iterates. With ``num_workers=0`` or ``persistent_workers=True`` that is all you
need. DataLoader workers that are re-created every epoch get a fresh copy of the
dataset, so either use :class:`ChannelDataLoader` (advances the dataset for you) or
call ``dataset.set_epoch(n)`` before each ``iter(loader)``, as with
``DistributedSampler``. In Pipe mode re-reading an epoch is an error (the FIFO is
written once).

RecordIO-protobuf (``format="recordio-protobuf"``, options ``batch_size``, ``sparse``,
``feature_key``, ``label_key``): the RecordIO records are sharded as above, then each
consumer decodes only its own (:mod:`smtk.channels.recordio_protobuf`). With
``batch_size`` an item is a batch, ``(features, labels)`` tensors (``features`` alone
without labels; sparse batches are ``torch.sparse_csr``), for ``DataLoader(batch_size=None)``;
without it an item is one record (a row, and its label).

Rank and world size come from ``torch.distributed`` when it is initialised, else from
``RANK``/``WORLD_SIZE`` (and ``LOCAL_RANK``/``LOCAL_WORLD_SIZE``, or Open MPI's
``OMPI_COMM_WORLD_*``).

::

    from smtk.channels.torch import ChannelDataset, ChannelDataLoader

    dataset = ChannelDataset("train", format="recordio", transform=decode)
    loader = ChannelDataLoader(dataset, batch_size=64, num_workers=2)
    for epoch in range(10):
        for batch in loader:          # epoch `dataset.epoch`
            ...
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from smtk.channels import get, recordio_protobuf
from smtk.channels.channel import Channel
from smtk.channels.records import open_records
from smtk.errors import ChannelError

PROTOBUF_FORMAT = "recordio-protobuf"
_DECODE_OPTIONS = ("batch_size", "sparse", "feature_key", "label_key")


@dataclass(frozen=True)
class Consumer:
    """Where this iterator sits: rank, host-local rank and DataLoader worker."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def host_index(self) -> int:
        return self.rank // self.local_world_size

    @property
    def host_count(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def current_consumer(environ: Mapping[str, str] | None = None) -> Consumer:
    """This process's rank layout and DataLoader worker."""
    env = os.environ if environ is None else environ
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank = _int(env, ("RANK", "OMPI_COMM_WORLD_RANK"), 0)
        world = _int(env, ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"), 1)
    local_world = _int(env, ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"), world)
    local_rank = _int(env, ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"), rank % max(local_world, 1))
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world):
        raise ChannelError(
            f"inconsistent rank layout: rank {rank} of {world}, local rank {local_rank} of {local_world}"
        )
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Consumer(rank, world, local_rank, local_world, worker, workers)


def _int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        text = env.get(name)
        if text:
            try:
                return int(text)
            except ValueError:
                raise ChannelError(f"{name}={text!r} is not a whole number") from None
    return default


class ChannelDataset(IterableDataset[Any]):
    """Records of a channel, one epoch per ``iter()``, sharded across ranks and workers."""

    def __init__(
        self,
        channel: str | Channel | Sequence[str | Channel],
        format: str = "recordio",
        *,
        transform: Callable[[Any], Any] | None = None,
        shard: str = "record",
        start_epoch: int = 0,
        env: Any = None,
        epoch_options: Mapping[str, Any] | None = None,
        **reader_options: Any,
    ) -> None:
        if shard not in ("record", "file"):
            raise ValueError(f"shard must be 'record' or 'file', got {shard!r}")
        names = [channel] if isinstance(channel, (str, Channel)) else list(channel)
        if not names:
            raise ChannelError("ChannelDataset needs at least one channel")
        self.channels = [c if isinstance(c, Channel) else _lookup(c, env) for c in names]
        modes = {c.is_pipe for c in self.channels}
        if len(modes) > 1:
            raise ChannelError("ChannelDataset channels must all be Pipe mode or all File/FastFile mode")
        self.is_pipe = modes.pop()
        self.format = format
        self.transform = transform
        self.shard = shard
        self.reader_options = dict(reader_options)
        #: ``recordio-protobuf``: the records are RecordIO payloads decoded after sharding (so
        #: each consumer decodes only its own), with these options of ``decode_payloads``.
        self.decode_options: dict[str, Any] | None = None
        self._raw_format = format
        if format == PROTOBUF_FORMAT:
            for opened in self.channels:
                recordio_protobuf.check_content_type(opened)
            self.decode_options = {
                k: self.reader_options.pop(k) for k in _DECODE_OPTIONS if k in self.reader_options
            }
            self._raw_format = "recordio"
        self.epoch_options = dict(epoch_options or {})
        #: The epoch the next ``iter()`` reads.
        self.next_epoch = start_epoch
        #: The epoch being (or last) read in this process; ``None`` before the first.
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` read ``epoch`` (needed with non-persistent workers)."""
        if epoch < 0:
            raise ValueError(f"epoch numbers start at 0, got {epoch}")
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        number = self.next_epoch
        self.next_epoch += 1
        self.epoch = number
        consumer = current_consumer()
        records = self._pipe(number, consumer) if self.is_pipe else self._files(number, consumer)
        if self.decode_options is not None:
            records = self._decoded(records, consumer)
        transform = self.transform
        return records if transform is None else map(transform, records)

    # -- File / FastFile ---------------------------------------------------------------

    def _files(self, number: int, consumer: Consumer) -> Iterator[Any]:
        if self.channels[0].distribution == "ShardedByS3Key":
            index = consumer.local_rank * consumer.num_workers + consumer.worker
            count = consumer.local_world_size * consumer.num_workers
        else:
            index = consumer.rank * consumer.num_workers + consumer.worker
            count = consumer.world_size * consumer.num_workers
        paths = [path for channel in self.channels for path in channel.files()]
        if self.shard == "file":
            return self._read_files(paths[index::count])
        return _every(self._read_files(paths), index, count)

    def _read_files(self, paths: list[str]) -> Iterator[Any]:
        for path in paths:
            with open_records(path, self._raw_format, **self.reader_options) as reader:
                yield from reader

    # -- Pipe --------------------------------------------------------------------------

    def _pipe(self, number: int, consumer: Consumer) -> Iterator[Any]:
        slot = consumer.local_rank * consumer.num_workers + consumer.worker
        slots = consumer.local_world_size * consumer.num_workers
        if len(self.channels) != slots:
            names = ", ".join(c.name for c in self.channels)
            raise ChannelError(
                f"Pipe channel(s) {names}: a FIFO can have only one reader, but this host has {slots} "
                f"consumers ({consumer.local_world_size} local rank(s) x {consumer.num_workers} "
                f"DataLoader worker(s)) for {len(self.channels)} channel(s)",
                hint="give ChannelDataset one Pipe channel per consumer (e.g. train_0, train_1, ...), "
                "or use num_workers=0 with one rank per host",
            )
        channel = self.channels[slot]
        records = self._pipe_records(channel, number)
        if channel.distribution == "FullyReplicated" and consumer.host_count > 1:
            return _every(records, consumer.host_index, consumer.host_count)
        return records

    def _pipe_records(self, channel: Channel, number: int) -> Iterator[Any]:
        with channel.epoch(number, **self.epoch_options) as epoch:
            yield from epoch.records(self._raw_format, **self.reader_options)

    # -- RecordIO-protobuf -------------------------------------------------------------

    def _decoded(self, payloads: Iterator[bytes], consumer: Consumer) -> Iterator[Any]:
        """Batches as ``(features, labels)`` tensors (``features`` alone without labels), or
        with ``batch_size=None`` one item per record."""
        options = dict(self.decode_options or {})
        batch_size = options.pop("batch_size", None)
        names = ", ".join(repr(c.name) for c in self.channels)
        source = f"channel {names} (the records of rank {consumer.rank}, worker {consumer.worker})"
        batches = recordio_protobuf.decode_payloads(
            payloads, source, batch_size or recordio_protobuf.DEFAULT_BATCH_SIZE, **options
        )
        for batch in batches:
            labels = None if batch.labels is None else torch.from_numpy(batch.labels)
            if batch_size is not None:
                yield _item(_batch_tensors(batch.features), labels)
            elif labels is None:
                yield from _row_tensors(batch.features)
            else:
                yield from zip(_row_tensors(batch.features), labels, strict=True)


def _batch_tensors(features: Any) -> Any:
    """A batch's features as a tensor: dense ones share the array's memory; CSR rows become
    a sparse CSR tensor."""
    parts = recordio_protobuf.csr_parts(features)
    if parts is None:
        return torch.from_numpy(features)
    return torch.sparse_csr_tensor(
        torch.from_numpy(parts.indptr.astype("int64")),
        torch.from_numpy(parts.indices.astype("int64")),
        torch.from_numpy(parts.data),
        parts.shape,
        check_invariants=False,  # the decoder has checked every key against the shape
    )


def _row_tensors(features: Any) -> Iterator[Any]:
    """A batch's rows: views of the dense tensor, or 1-D sparse COO tensors."""
    parts = recordio_protobuf.csr_parts(features)
    if parts is None:
        yield from torch.from_numpy(features)
        return
    data = torch.from_numpy(parts.data)
    indices = torch.from_numpy(parts.indices.astype("int64"))
    bounds = parts.indptr.tolist()
    columns = parts.shape[1]
    for start, end in itertools.pairwise(bounds):
        yield torch.sparse_coo_tensor(
            indices[start:end].unsqueeze(0), data[start:end], (columns,), check_invariants=False
        )


def _item(features: Any, labels: Any) -> Any:
    return features if labels is None else (features, labels)


def _every(records: Iterator[Any], index: int, count: int) -> Iterator[Any]:
    if count == 1:
        yield from records
        return
    for position, record in enumerate(records):
        if position % count == index:
            yield record


def _lookup(name: str, env: Any) -> Channel:
    return get(name, env)


class ChannelDataLoader(DataLoader[Any]):
    """A ``DataLoader`` that moves its :class:`ChannelDataset` to the next epoch on every
    ``iter()``, also when its workers are re-created each epoch."""

    def __iter__(self) -> Any:
        dataset = self.dataset
        if not isinstance(dataset, ChannelDataset) or self.num_workers == 0:
            return super().__iter__()
        number = dataset.next_epoch
        iterator = super().__iter__()  # workers start here, with a copy at `number`
        dataset.epoch = number
        dataset.next_epoch = number + 1
        return iterator
