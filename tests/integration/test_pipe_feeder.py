"""The PipeFeeder library: stop() in every state, sharding, S3 sources, bad settings."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from smtk.channels.pipe import open_epoch
from smtk.channels.records import open_records
from smtk.errors import ChannelError, ConfigError
from smtk.pipefeed import PipeFeeder
from tests.helpers.s3server import S3Server


def wait_for_fifo(path: str, timeout: float = 60.0) -> None:
    """The feeder makes the FIFO before it blocks for a reader; wait until it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.S_ISFIFO(os.stat(path).st_mode):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def make_source(tmp_path: Path, count: int, size: int = 10) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        (src / f"part-{i:02d}").write_bytes(bytes([i]) * (size + i))
    return src


def test_stop_unblocks_a_feeder_whose_reader_never_comes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    feeder = PipeFeeder("train", str(make_source(tmp_path, 2)), str(data), epochs=3)
    feeder.start()
    wait_for_fifo(str(data / "train_0"))
    assert feeder.running
    feeder.stop(timeout=60)
    assert not feeder.running
    assert feeder.error is None
    assert feeder.epochs_done == 0
    assert os.listdir(data) == []
    assert feeder.wait(0)


def test_stop_unblocks_a_feeder_whose_reader_stopped_reading(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(8 << 20))  # far more than the pipe holds
    feeder = PipeFeeder("train", str(src), str(tmp_path / "data"), epochs=1)
    feeder.start()
    with open_epoch(str(tmp_path / "data" / "train"), 0, timeout=120) as epoch:
        assert len(epoch.read(100)) > 0
        feeder.stop(timeout=60)  # the reader holds the FIFO open but reads no more
        assert not feeder.running
    assert feeder.error is None


def test_feeding_in_the_foreground_and_wait(tmp_path: Path) -> None:
    src = make_source(tmp_path, 3)
    feeder = PipeFeeder("train", str(src), str(tmp_path / "data"), epochs=2)
    results: list[list[bytes]] = []

    def read() -> None:
        for n in range(2):
            with open_epoch(str(tmp_path / "data" / "train"), n, timeout=120) as epoch:
                results.append([epoch.read()])

    reader = threading.Thread(target=read)
    reader.start()
    feeder.run()
    reader.join(timeout=120)
    whole = b"".join((src / f"part-{i:02d}").read_bytes() for i in range(3))
    assert results == [[whole], [whole]]
    assert feeder.epochs_done == 2
    assert feeder.bytes_written == 2 * len(whole)


@pytest.mark.parametrize("host_index", [0, 1, 2])
def test_sharded_by_s3_key_gives_each_host_its_share(tmp_path: Path, host_index: int) -> None:
    src = make_source(tmp_path, 7)
    feeder = PipeFeeder(
        "train",
        str(src),
        str(tmp_path / "data"),
        epochs=1,
        record_wrapper="RecordIO",
        distribution="ShardedByS3Key",
        host_index=host_index,
        host_count=3,
    )
    feeder.start()
    try:
        with open_epoch(str(tmp_path / "data" / "train"), 0, timeout=120) as epoch:
            records = list(epoch.records("recordio"))
    finally:
        feeder.stop()
    assert [r[0] for r in records] == list(range(host_index, 7, 3))


def test_s3_source(tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    objects = {
        "train/b.rec": os.urandom(3000),
        "train/a.rec": os.urandom(5),
        "train/sub/": b"",
        "other/x": b"not mine",
    }
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    feeder = PipeFeeder(
        "train",
        f"s3://{bucket}/train/",
        str(tmp_path / "data"),
        epochs=2,
        record_wrapper="RecordIO",
        environ=s3_env,
    )
    feeder.start()
    try:
        for n in range(2):
            with open_epoch(str(tmp_path / "data" / "train"), n, timeout=120) as epoch:
                assert list(open_records(epoch, "recordio")) == [
                    objects["train/a.rec"],
                    objects["train/b.rec"],
                ]
        assert feeder.wait(120)
    finally:
        feeder.stop()
    assert feeder.error is None
    assert [o.name for o in feeder.objects] == ["train/a.rec", "train/b.rec"]


def test_s3_listing_failure_is_a_channel_error(tmp_path: Path, s3_env: dict[str, str]) -> None:
    feeder = PipeFeeder("train", "s3://no-such-bucket-smtk/x", str(tmp_path), epochs=1, environ=s3_env)
    with pytest.raises(ChannelError, match=r"cannot list s3://no-such-bucket-smtk/x: .*NoSuchBucket"):
        feeder.start()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channel": "../x"}, "expected a channel name"),
        ({"epochs": 0}, "epochs"),
        ({"record_wrapper": "Gzip"}, "record_wrapper"),
        ({"distribution": "Random"}, "distribution"),
        ({"host_index": 2, "host_count": 2}, "host_index"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {
        "channel": "train",
        "source": str(tmp_path),
        "data_dir": str(tmp_path),
        "epochs": 1,
    }
    settings.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        PipeFeeder(**settings)  # type: ignore[arg-type]


def test_a_missing_source_and_a_non_fifo_in_the_way(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--source: expected a directory, a file or an s3:// prefix"):
        PipeFeeder("train", str(tmp_path / "missing"), str(tmp_path), epochs=1).start()
    data = tmp_path / "data"
    data.mkdir()
    (data / "train_0").write_text("a regular file")
    feeder = PipeFeeder("train", str(make_source(tmp_path, 1)), str(data), epochs=1)
    feeder.start()
    assert feeder.wait(60)
    assert isinstance(feeder.error, ChannelError)
    assert "exists and is not a FIFO" in str(feeder.error)
    assert (data / "train_0").read_text() == "a regular file"


def test_log_lines_name_the_host_beside_several_hosts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    one = PipeFeeder("train", str(data), str(tmp_path / "in"), epochs=1)
    two = PipeFeeder(
        "train", str(data), str(tmp_path / "in"), epochs=1, host_index=1, host_count=2, host="algo-2"
    )
    assert (one.name, two.name) == ("pipe-feed train", "algo-2 | pipe-feed train")
