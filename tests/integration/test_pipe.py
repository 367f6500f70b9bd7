"""Pipe-mode channels against real FIFOs and real writer processes (``smtk pipe-feed``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import smtk.channels
from smtk.channels import Channel, FifoTimeoutError, RecordError, UnknownChannelError
from smtk.channels.pipe import PipeEpoch
from smtk.channels.records import encode_recordio
from smtk.environment import Environment
from smtk.errors import ChannelError
from tests.helpers.jobtree import make_tree
from tests.helpers.pipefeed import start_pipe_feed

PIPE = {"TrainingInputMode": "Pipe"}


def job(tmp_path: Path, **channels: dict[str, str]) -> Environment:
    root = make_tree(tmp_path, inputdataconfig=channels)
    return Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})


def source_dir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    src = tmp_path / "source"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    return src


def test_several_epochs_with_recordio_wrapping(
    tmp_path: Path, feeders: list[subprocess.Popen[bytes]]
) -> None:
    files = {"a.bin": os.urandom(3_000_001), "b/c.txt": b"hello", "b/d": b""}
    env = job(
        tmp_path, train={**PIPE, "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"}
    )
    feeder = start_pipe_feed(
        feeders, env, "train", source_dir(tmp_path, files), "--epochs", "3", "--record-wrapper", "RecordIO"
    )
    train = env.channels["train"]
    assert (train.mode, train.record_wrapper, train.content_type) == (
        "Pipe",
        "RecordIO",
        "application/x-recordio",
    )
    seen = []
    for epoch in train.epochs(count=3, timeout=120):
        assert isinstance(epoch, PipeEpoch)
        records = list(epoch.records("recordio"))
        seen.append((epoch.number, records))
    expected = [files["a.bin"], files["b/c.txt"], files["b/d"]]  # S3 key order
    assert seen == [(0, expected), (1, expected), (2, expected)]
    assert feeder.wait(timeout=60) == 0
    assert sorted(os.listdir(env.paths.input_data_dir)) == []  # the feeder removed its FIFOs


def test_early_close_moves_the_feeder_on(tmp_path: Path, feeders: list[subprocess.Popen[bytes]]) -> None:
    data = os.urandom(5 << 20)
    env = job(tmp_path, train=PIPE)
    feeder = start_pipe_feed(feeders, env, "train", source_dir(tmp_path, {"big": data}), "--epochs", "3")
    train = smtk.channels.get("train", env)
    with train.epoch(0, timeout=120) as epoch:
        assert epoch.read(10) == data[:10]
    for epoch in train.epochs(start=1, count=2, timeout=120):
        assert isinstance(epoch, PipeEpoch)
        if epoch.number == 1:
            # break out of the inner loop after one chunk: epochs() closes it for us
            next(iter(epoch))
            continue
        assert b"".join(epoch) == data
    assert feeder.wait(timeout=60) == 0
    _, err = feeder.communicate()
    assert b"epoch 0: the reader closed it after" in err
    assert b"epoch 1: the reader closed it after" in err


class Waiting(logging.Handler):
    """Sets an event when the reader logs that it is waiting for a FIFO."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if message.startswith("waiting for FIFO"):
            self.event.set()


WRITER = textwrap.dedent(
    """
    import os, sys
    path, payload, mode = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
    if mode == "late":
        sys.stdin.readline()           # the test says when: after the reader started waiting
    os.mkfifo(path)
    with open(path, "wb", buffering=0) as fifo:
        fifo.write(payload)
        if mode == "stall":
            sys.stdin.readline()       # hold the FIFO open and send nothing more
    """
)


def writer(path: str, payload: bytes, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, path, payload.hex(), mode], stdin=subprocess.PIPE, text=True
    )


def test_a_fifo_that_appears_late_is_waited_for_with_progress(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE)
    train = env.channels["train"]
    record = encode_recordio(b"late but here")
    proc = writer(train.path + "_0", record, "late")
    handler = Waiting()
    logger = logging.getLogger("smtk")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def release() -> None:
        handler.event.wait(timeout=120)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()

    thread = threading.Thread(target=release)
    thread.start()
    try:
        with train.epoch(0, timeout=240) as epoch:
            assert list(epoch.records("recordio")) == [b"late but here"]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        thread.join(timeout=130)
        proc.communicate(timeout=60)
    waiting = [m for m in handler.messages if m.startswith("waiting for FIFO")]
    assert waiting and train.path + "_0 (epoch 0): attempt" in waiting[0]
    assert "s left" in waiting[0]


def test_a_fifo_that_never_appears_is_a_bounded_clear_error(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE)
    with pytest.raises(FifoTimeoutError) as info:
        env.channels["train"].epoch(0, timeout=0.3)
    error = info.value
    assert error.path == env.paths.channel_dir("train") + "_0"
    assert error.waited >= 0.3
    assert f"FIFO {error.path} (epoch 0) did not appear within" in str(error)
    assert "smtk pipe-feed" in str(error)


def test_timeout_comes_from_the_environment(tmp_path: Path) -> None:
    root = make_tree(tmp_path, inputdataconfig={"train": PIPE})
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root), "SMTK_PIPE_TIMEOUT": "0.2"})
    with pytest.raises(FifoTimeoutError, match="did not appear"):
        env.channels["train"].epoch(0)
    # A bad setting fails as soon as the job is read (train: exit status 2 before anything runs).
    with pytest.raises(smtk.errors.ConfigError, match="SMTK_PIPE_TIMEOUT: expected a number >= 0"):
        Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root), "SMTK_PIPE_TIMEOUT": "soon"})


def test_a_fifo_without_a_writer_times_out_with_its_own_message(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE)
    os.mkfifo(env.paths.channel_dir("train") + "_0")
    with pytest.raises(FifoTimeoutError, match=r"exists but no writer sent anything"):
        env.channels["train"].epoch(0, timeout=0.3)


def test_a_writer_that_dies_mid_record_is_a_truncation_error(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE)
    train = env.channels["train"]
    data = encode_recordio(b"whole") + encode_recordio(b"y" * 1000)[:300]
    proc = writer(train.path + "_0", data, "die")
    with train.epoch(0, timeout=120) as epoch:
        reader = epoch.records("recordio")
        got = []
        with pytest.raises(RecordError) as info:
            for record in reader:
                got.append(record)
    assert got == [b"whole"]
    assert info.value.offset == 16
    assert info.value.source == train.path + "_0"
    assert "1000 bytes of payload" in str(info.value)
    assert proc.wait(timeout=60) == 0


def test_a_writer_that_stalls_mid_record_fails_after_the_stall_timeout(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE)
    train = env.channels["train"]
    proc = writer(train.path + "_0", encode_recordio(b"z" * 100)[:50], "stall")
    try:
        with (
            train.epoch(0, timeout=120, stall_timeout=0.5) as epoch,
            pytest.raises(
                FifoTimeoutError, match=r"the writer sent nothing for [\d.]+ s \(after 50 bytes of epoch 0\)"
            ),
        ):
            list(epoch.records("recordio"))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


def test_reading_an_epoch_twice_fails_at_once(tmp_path: Path, feeders: list[subprocess.Popen[bytes]]) -> None:
    env = job(tmp_path, train=PIPE)
    feeder = start_pipe_feed(feeders, env, "train", source_dir(tmp_path, {"f": b"data"}), "--epochs", "2")
    train = env.channels["train"]
    with train.epoch(0, timeout=120) as epoch:
        assert epoch.read() == b"data"
    with pytest.raises(ChannelError, match=r"epoch 0 was already read to the end by this process") as info:
        train.epoch(0, timeout=120)
    assert "read epoch 1 next" in str(info.value)
    with train.epoch(1, timeout=120) as epoch:
        assert epoch.read() == b"data"
    assert feeder.wait(timeout=60) == 0


def test_augmented_manifest_in_pipe_mode_is_regrouped(
    tmp_path: Path, feeders: list[subprocess.Popen[bytes]]
) -> None:
    # Each attribute of each line arrives as its own RecordIO record: a directory with one
    # file per attribute value, wrapped by the feeder, is exactly that stream.
    rows = [(os.urandom(2000), b'{"class": 1}'), (os.urandom(10), b'{"class": 0}')]
    files = {f"{i:03d}-{k}": value for i, row in enumerate(rows) for k, value in enumerate(row)}
    env = job(tmp_path, train={**PIPE, "RecordWrapperType": "RecordIO"})
    feeder = start_pipe_feed(
        feeders, env, "train", source_dir(tmp_path, files), "--record-wrapper", "RecordIO"
    )
    with env.channels["train"].epoch(0, timeout=120) as epoch:
        lines = list(epoch.records("manifest", attribute_names=["source-ref", "class-metadata"]))
    assert lines == [{"source-ref": a, "class-metadata": b} for a, b in rows]
    assert feeder.wait(timeout=60) == 0


def test_file_mode_channels_expose_their_directory(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        inputdataconfig={"train": {"TrainingInputMode": "File"}, "val": {"TrainingInputMode": "FastFile"}},
        raw_files={
            "input/data/train/b.rec": encode_recordio(b"2"),
            "input/data/train/a/x.rec": encode_recordio(b"1"),
            "input/data/train/a.rec": encode_recordio(b"0"),
        },
    )
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})
    train, val = env.channels["train"], env.channels["val"]
    assert (train.read_only, val.read_only) == (False, True)
    assert train.directory == str(root / "input" / "data" / "train")
    names = [os.path.relpath(p, train.directory) for p in train.files()]
    assert names == ["a.rec", "a/x.rec", "b.rec"]  # byte order of the key, as S3 lists
    assert list(train.records("recordio")) == [b"0", b"1", b"2"]
    assert [list(e.records("recordio")) for e in train.epochs(count=2)] == [[b"0", b"1", b"2"]] * 2
    with pytest.raises(ChannelError, match=r"the directory .* does not exist"):
        list(val.files())


def test_unknown_channels_are_explained(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE, eval={"TrainingInputMode": "File"})
    with pytest.raises(UnknownChannelError, match=r"no channel named 'test': .* lists 'eval', 'train'"):
        env.channels["test"]
    with pytest.raises(KeyError):
        env.channels["test"]
    assert env.channels.get("test") is None
    assert sorted(env.channels) == ["eval", "train"]
    with pytest.raises(UnknownChannelError, match=r"looks like the FIFO of epoch 0 of channel 'train'"):
        smtk.channels.get("train_0", env)
    os.makedirs(env.paths.channel_dir("extra"))
    with pytest.raises(
        UnknownChannelError, match=r"a directory .*extra exists, but the config does not list it"
    ):
        smtk.channels.get("extra", env)
    with pytest.raises(ChannelError, match=r"channel 'train' is in Pipe mode: it has no directory"):
        _ = env.channels["train"].directory


def test_get_builds_the_environment_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path, inputdataconfig={"train": PIPE})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(root))
    channel = smtk.channels.get("train")
    assert isinstance(channel, Channel)
    assert channel.path == str(root / "input" / "data" / "train")
    assert channel.is_pipe


def test_a_regular_file_where_the_fifo_should_be(tmp_path: Path) -> None:
    env = job(tmp_path, train=PIPE)
    Path(env.paths.channel_dir("train") + "_0").write_bytes(b"x")
    with pytest.raises(ChannelError, match=r"train_0 is a regular file, not a FIFO"):
        env.channels["train"].epoch(0, timeout=5)


def test_views_hand_over_page_aligned_buffers_that_never_change_under_you(
    tmp_path: Path, feeders: list[subprocess.Popen[bytes]]
) -> None:
    import ctypes
    import pickle

    data = os.urandom(3 << 20)
    env = job(tmp_path, train=PIPE)
    feeder = start_pipe_feed(feeders, env, "train", source_dir(tmp_path, {"big": data}), "--epochs", "2")
    train = env.channels["train"]
    with train.epoch(0, timeout=120) as epoch:
        # Drop each view at once: a few buffers serve the whole epoch.
        buffers, total = set(), bytearray()
        for view in epoch.views(64 << 10):
            assert view.readonly and 0 < len(view) <= 64 << 10
            # page-aligned: what the kernel copies into fastest
            assert ctypes.addressof(ctypes.c_char.from_buffer(view.obj)) % mmap_page() == 0
            buffers.add(id(view.obj))
            total += view
            del view
        assert bytes(total) == data
        assert len(buffers) <= 4
    with train.epoch(1, timeout=120) as epoch:
        # Hold every view (and one through another exporter): none is ever overwritten.
        held = list(epoch.views(64 << 10))
        kept = pickle.PickleBuffer(held[0])
        first = bytes(held[0])
        assert b"".join(held) == data
        assert len({id(view.obj) for view in held}) == len(held)
        del held
        assert bytes(kept.raw()) == first == data[: len(first)]
    assert feeder.wait(timeout=60) == 0


def mmap_page() -> int:
    import mmap

    return mmap.PAGESIZE


def test_records_as_views_from_a_fifo(tmp_path: Path, feeders: list[subprocess.Popen[bytes]]) -> None:
    big, small = os.urandom(200_000), os.urandom(100)
    records = [small] * 40 + [big, small, big] + [b""]
    env = job(tmp_path, train=PIPE)
    src = source_dir(tmp_path, {"records.rec": b"".join(encode_recordio(r) for r in records)})
    feeder = start_pipe_feed(feeders, env, "train", src, "--epochs", "1")
    with env.channels["train"].epoch(0, timeout=120) as epoch:
        got = list(epoch.records("recordio", views=True))
    assert all(isinstance(r, memoryview) and r.readonly for r in got)
    assert [bytes(r) for r in got] == records
    assert feeder.wait(timeout=60) == 0
