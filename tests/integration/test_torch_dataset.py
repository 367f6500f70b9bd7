"""ChannelDataset with real DataLoader worker processes, real FIFOs and real feeders."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from smtk.channels.records import encode_recordio
from smtk.environment import Environment
from tests.helpers.jobtree import make_tree
from tests.helpers.pipefeed import start_pipe_feed

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, get_worker_info  # noqa: E402

from smtk.channels.torch import ChannelDataLoader, ChannelDataset, current_consumer  # noqa: E402
from smtk.errors import ChannelError  # noqa: E402


def tagged(record: bytes) -> tuple[int, int, bytes]:
    """(epoch, worker, record): module level so spawned workers could pickle it."""
    info = get_worker_info()
    assert info is not None
    return (info.dataset.epoch, info.id, record)


def no_collate(batch: list[Any]) -> list[Any]:
    return batch


def file_job(tmp_path: Path, files: int, per_file: int, **spec: str) -> tuple[Environment, list[bytes]]:
    records = [f"r{f}-{i}".encode() for f in range(files) for i in range(per_file)]
    raw = {
        f"input/data/train/f{f:02d}.rec": b"".join(
            encode_recordio(f"r{f}-{i}".encode()) for i in range(per_file)
        )
        for f in range(files)
    }
    root = make_tree(
        tmp_path, inputdataconfig={"train": {"TrainingInputMode": "File", **spec}}, raw_files=raw
    )
    return Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)}), records


def read_epochs(loader: DataLoader[Any], epochs: int) -> list[list[tuple[int, int, bytes]]]:
    return [[item for batch in loader for item in batch] for _ in range(epochs)]


@pytest.mark.parametrize("shard", ["record", "file"])
def test_two_workers_read_every_record_exactly_once_per_epoch(tmp_path: Path, shard: str) -> None:
    env, records = file_job(tmp_path, files=5, per_file=7)
    dataset = ChannelDataset("train", "recordio", env=env, transform=tagged, shard=shard)
    loader = ChannelDataLoader(dataset, batch_size=4, num_workers=2, collate_fn=no_collate)
    epochs = read_epochs(loader, 3)
    for number, items in enumerate(epochs):
        assert Counter(r for _, _, r in items) == Counter(records)
        assert {e for e, _, _ in items} == {number}
        assert {w for _, w, _ in items} == {0, 1}
    assert dataset.epoch == 2
    assert dataset.next_epoch == 3


def test_persistent_workers_advance_their_own_epochs(tmp_path: Path) -> None:
    env, records = file_job(tmp_path, files=2, per_file=5)
    dataset = ChannelDataset("train", env=env, transform=tagged)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True, collate_fn=no_collate)
    epochs = read_epochs(loader, 2)
    assert [sorted({e for e, _, _ in items}) for items in epochs] == [[0], [1]]
    assert all(Counter(r for _, _, r in items) == Counter(records) for items in epochs)


def test_ranks_and_workers_split_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, records = file_job(tmp_path, files=3, per_file=5)
    seen: list[bytes] = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dataset = ChannelDataset("train", env=env, transform=tagged)
        loader = ChannelDataLoader(dataset, batch_size=2, num_workers=2, collate_fn=no_collate)
        seen += [r for _, _, r in read_epochs(loader, 1)[0]]
    assert Counter(seen) == Counter(records)


def test_sharded_channels_split_only_among_the_hosts_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, records = file_job(tmp_path, files=2, per_file=4, S3DistributionType="ShardedByS3Key")
    # rank 2 of 4 on the second host (2 ranks per host): this host's files are its own
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert current_consumer().host_index == 1
    mine = list(ChannelDataset("train", env=env))
    assert mine == records[0::2]


def pipe_job(tmp_path: Path, names: list[str]) -> Environment:
    root = make_tree(tmp_path, inputdataconfig={n: {"TrainingInputMode": "Pipe"} for n in names})
    return Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})


def test_pipe_mode_one_channel_per_worker(tmp_path: Path, feeders: list[subprocess.Popen[bytes]]) -> None:
    env = pipe_job(tmp_path, ["train_a", "train_b"])
    expected: list[bytes] = []
    for name in ("train_a", "train_b"):
        src = tmp_path / f"src-{name}"
        src.mkdir()
        payloads = [f"{name}-{i}".encode() for i in range(20)]
        (src / "data.rec").write_bytes(b"".join(encode_recordio(p) for p in payloads))
        expected += payloads
        start_pipe_feed(feeders, env, name, src, "--epochs", "2", stderr=subprocess.DEVNULL)
    dataset = ChannelDataset(
        ["train_a", "train_b"], "recordio", env=env, transform=tagged, epoch_options={"timeout": 120}
    )
    loader = ChannelDataLoader(dataset, batch_size=8, num_workers=2, collate_fn=no_collate)
    for number, items in enumerate(read_epochs(loader, 2)):
        assert Counter(r for _, _, r in items) == Counter(expected)
        assert {e for e, _, _ in items} == {number}
        # worker w read channel w
        assert all(r.startswith(b"train_a" if w == 0 else b"train_b") for _, w, r in items)
    assert [proc.wait(timeout=60) for proc in feeders] == [0, 0]


def test_pipe_mode_refuses_two_readers_on_one_fifo(tmp_path: Path) -> None:
    env = pipe_job(tmp_path, ["train"])
    dataset = ChannelDataset("train", env=env, epoch_options={"timeout": 1})
    loader = DataLoader(dataset, num_workers=2)
    with pytest.raises(ChannelError, match=r"a FIFO can have only one reader, but this host has 2 consumers"):
        next(iter(loader))
    assert not os.path.exists(env.paths.channel_dir("train") + "_0")


def test_pipe_mode_in_the_main_process(tmp_path: Path, feeders: list[subprocess.Popen[bytes]]) -> None:
    env = pipe_job(tmp_path, ["train"])
    src = tmp_path / "src"
    src.mkdir()
    (src / "d.rec").write_bytes(b"".join(encode_recordio(bytes([i])) for i in range(10)))
    start_pipe_feed(feeders, env, "train", src, "--epochs", "2", stderr=subprocess.DEVNULL)
    dataset = ChannelDataset("train", env=env, epoch_options={"timeout": 120})
    loader = DataLoader(dataset, batch_size=None)
    assert [list(loader), list(loader)] == [[bytes([i]) for i in range(10)]] * 2
    assert dataset.epoch == 1
