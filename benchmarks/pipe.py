"""Pipe-mode read throughput and record parsing speed, as ratios measured in one run.

1. Raw read: ``smtk pipe-feed`` streams the same file into a FIFO twice per trial; once
   ``cat FIFO > /dev/null`` reads it, once a Pipe channel epoch (``for chunk in epoch``)
   does. Target: smtk/cat >= 1.0. (cat is timed from spawn to exit; smtk from just before
   ``open_epoch`` to EOF, inside its process, so interpreter start-up is not counted.)
2. Records/s: RecordIO and TFRecord files of small (100 B) and large (100 KB) records,
   parsed by smtk's readers and by the reference toolkit's ``_read_recordio`` (run in
   ``.venv-ref`` or ``$SMTK_REFERENCE_PYTHON``). Target: >= 3x the reference's records/s.

Each measurement runs in a fresh process and the best of ``--repeat`` runs is kept.

::

    .venv/bin/python benchmarks/pipe.py [--size-mb 512] [--small 300000] [--large 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTK = str(Path(sys.executable).parent / "smtk")

READ_EPOCH = """
import json, sys, time
from smtk.channels.pipe import open_epoch
started = time.perf_counter()
total = 0
with open_epoch(sys.argv[1], 0, timeout=120) as epoch:
    for chunk in epoch:
        total += len(chunk)
print(json.dumps({"bytes": total, "seconds": time.perf_counter() - started}))
"""

SMTK_PARSE = """
import json, sys, time
from smtk.channels.records import open_records
from smtk.channels.crc32c import backend_name
path, fmt, check = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
options = {"check_crc": check} if fmt == "tfrecord" else {}
started = time.perf_counter()
count = 0
for _ in open_records(path, fmt, **options):
    count += 1
print(json.dumps({"records": count, "seconds": time.perf_counter() - started, "crc": backend_name()}))
"""

REFERENCE_PARSE = """
import json, sys, time
from sagemaker_training.recordio import _read_recordio
started = time.perf_counter()
count = 0
with open(sys.argv[1], "rb") as handle:
    for _ in _read_recordio(handle):
        count += 1
print(json.dumps({"records": count, "seconds": time.perf_counter() - started}))
"""


def wait_for_fifo(path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if stat.S_ISFIFO(os.stat(path).st_mode):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{path} never appeared")


def feeder(source: Path, data_dir: Path, channel: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SMTK, "pipe-feed", "--channel", channel, "--source", str(source), "--data-dir", str(data_dir)],
        stderr=subprocess.DEVNULL,
    )


def raw_read(tmp: Path, size_mb: int, repeat: int) -> None:
    source = tmp / "raw.bin"
    with source.open("wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(size_mb):
            handle.write(block)
    size = source.stat().st_size
    cat_best, smtk_best = float("inf"), float("inf")
    for trial in range(repeat):
        data = tmp / f"raw-{trial}"
        feed = feeder(source, data, "cat")
        wait_for_fifo(str(data / "cat_0"))
        started = time.perf_counter()
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", str(data / "cat_0")], stdout=null, check=True)
        cat_best = min(cat_best, time.perf_counter() - started)
        feed.wait(timeout=120)

        feed = feeder(source, data, "smtk")
        result = subprocess.run(
            [sys.executable, "-c", READ_EPOCH, str(data / "smtk")], capture_output=True, text=True, check=True
        )
        measured = json.loads(result.stdout)
        assert measured["bytes"] == size, measured
        smtk_best = min(smtk_best, measured["seconds"])
        feed.wait(timeout=120)
    gib = size / (1 << 30)
    print(f"raw Pipe read, {size_mb} MiB, best of {repeat}:")
    print(f"  cat FIFO > /dev/null   {gib / cat_best:8.2f} GiB/s")
    print(f"  smtk epoch chunks      {gib / smtk_best:8.2f} GiB/s")
    print(f"  ratio smtk/cat         {cat_best / smtk_best:8.2f}   (target >= 1.0)")


def best_of(argv: list[str], repeat: int, env: dict[str, str] | None = None) -> dict[str, float | str]:
    best: dict[str, float | str] | None = None
    for _ in range(repeat):
        result = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
        measured = json.loads(result.stdout)
        if best is None or measured["seconds"] < best["seconds"]:
            best = measured
    assert best is not None
    return best


def parsing(tmp: Path, small: int, large: int, repeat: int) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from smtk.channels.records import write_records

    reference = os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python"))
    have_reference = os.path.exists(reference)
    if not have_reference:
        print(f"reference toolkit not found at {reference}: records/s printed without ratios")
    print(f"\nrecords/s, best of {repeat} (each in a fresh process):")
    header = f"  {'records':<16}{'reader':<34}{'records/s':>14}{'vs reference':>14}"
    print(header)
    for label, count, size in (("100 B", small, 100), ("100 KB", large, 100_000)):
        payloads = [os.urandom(size) for _ in range(min(count, 1000))]
        paths = {}
        for fmt in ("recordio", "tfrecord"):
            paths[fmt] = tmp / f"{size}.{fmt}"
            with paths[fmt].open("wb") as sink:
                write_records(sink, (payloads[i % len(payloads)] for i in range(count)), fmt)
        base = None
        if have_reference:
            ref = best_of([reference, "-c", REFERENCE_PARSE, str(paths["recordio"])], repeat)
            assert ref["records"] == count
            base = count / float(ref["seconds"])
            print(f"  {label:<16}{'reference _read_recordio':<34}{base:>14,.0f}{'1.00x':>14}")
        runs = [
            ("recordio", "1", None, "smtk recordio"),
            ("tfrecord", "1", "python", "smtk tfrecord, CRC (pure Python)"),
            ("tfrecord", "1", "auto", "smtk tfrecord, CRC (auto backend)"),
            ("tfrecord", "0", None, "smtk tfrecord, no CRC check"),
        ]
        for fmt, check, crc, label_text in runs:
            name = label_text
            env = dict(os.environ)
            if crc == "python":
                env["SMTK_CRC32C"] = "python"
            measured = best_of([sys.executable, "-c", SMTK_PARSE, str(paths[fmt]), fmt, check], repeat, env)
            assert measured["records"] == count
            if crc == "auto":
                name = f"smtk tfrecord, CRC ({measured['crc']})"
            rate = count / float(measured["seconds"])
            ratio = f"{rate / base:.2f}x" if base else "-"
            print(f"  {label:<16}{name:<34}{rate:>14,.0f}{ratio:>14}")
        print(f"  (target for the smtk rows: >= 3.00x; {count} records of {label})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=512, help="raw read data size (default 512 MiB)")
    parser.add_argument("--small", type=int, default=300_000, help="number of 100 B records")
    parser.add_argument("--large", type=int, default=1000, help="number of 100 KB records")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="smtk-bench-pipe-"))
    try:
        raw_read(tmp, args.size_mb, args.repeat)
        parsing(tmp, args.small, args.large, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
