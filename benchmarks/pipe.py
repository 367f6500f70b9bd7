"""Pipe-mode read throughput and record parsing speed, as ratios measured in one run.

1. Raw read: ``smtk pipe-feed`` (the same writer, ``sendfile`` into the FIFO) streams the
   same file into a FIFO for each trial; ``cat FIFO > /dev/null`` reads it, or a Pipe
   channel epoch does: into one 512 KiB page-aligned buffer of the caller's own
   (``epoch.readinto(buffer)`` in a loop: the raw read, which is what ``cat`` does with
   its 128 KiB buffer; the target is for this row), as zero-copy views
   (``for view in epoch.views()``: two buffers alternate, because a view is never
   overwritten while the caller may still hold it), or as ``bytes`` chunks
   (``for chunk in epoch``: a fresh object each time). The readers take turns (the order
   rotates every round), so a noisy machine hits all alike. Each reader starts once the
   FIFO exists: cat is timed from spawn to exit; smtk from just before ``open_epoch`` to
   EOF, inside its process (interpreter start-up not counted). With two CPUs or more the
   writer is pinned to one CPU and every reader to another (``--no-pin`` leaves placement
   to the scheduler): unpinned, whether the scheduler wakes the reader on the writer's
   CPU, which halves throughput, varies from run to run by more than the readers differ.
   Target: smtk readinto/cat >= 1.0.
2. Records/s: RecordIO and TFRecord files of small (100 B) and large (100 KB) records,
   parsed by smtk's readers and by the reference toolkit's ``_read_recordio`` (run in
   ``.venv-ref`` or ``$SMTK_REFERENCE_PYTHON``). Target: >= 3x the reference's records/s.
   For the large records a plain ``os.read`` loop (header read, payload read: the one
   copy any reader that returns ``bytes`` must make) is shown as the ceiling of readers
   that return ``bytes``, reading the TFRecord file in 1 MiB chunks and running
   ``google-crc32c`` over every byte (no parsing) as the ceiling of readers that check
   CRCs, and smtk's ``views=True`` readers (records are views of the memory-mapped
   file: no copy; the bytes are read when the consumer touches them) are shown beside
   them.

Each measurement runs in a fresh process; every round runs all of them in turn. Parsers
start the clock once their modules are imported (smtk's, and the CRC extension's, which
smtk imports on first use: 4-9 ms here) and after a ``gc.collect()``: otherwise a fresh
interpreter's first full collection of its start-up objects (about 1.5 ms here) falls
inside the timing of whichever reader first allocates objects the collector tracks
(``memoryview`` records do, ``bytes`` do not), which at 1000 records of 100 KB is half
the run. Every timed loop (smtk's, the reference's, the ceiling's) runs inside a
function, as a training loop does: at module level each ``count += 1`` is a store into
the globals dict (about 45 ns a record here), the same cost added to both sides, which
measures the harness rather than the parser. Printed: the best of ``--repeat`` rounds,
the ratio of the bests, and the median of the per-round ratios (each taken between runs
made seconds apart).

::

    .venv/bin/python benchmarks/pipe.py [--size-mb 512] [--small 300000] [--large 1000] [--repeat 5]
                                        [--part all|raw|records] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMTK = str(Path(sys.executable).parent / "smtk")

READ_EPOCH = """
import json, mmap, sys, time
from smtk.channels.pipe import open_epoch
started = time.perf_counter()
total = 0
with open_epoch(sys.argv[1], 0, timeout=120) as epoch:
    if sys.argv[2] == "readinto":
        buffer = mmap.mmap(-1, 512 << 10)
        while count := epoch.readinto(buffer):
            total += count
    else:
        for chunk in (epoch.views() if sys.argv[2] == "views" else epoch):
            total += len(chunk)
print(json.dumps({"bytes": total, "seconds": time.perf_counter() - started}))
"""

SMTK_PARSE = """
import gc, json, sys, time
from smtk.channels.records import open_records
from smtk.channels.crc32c import backend_name
path, fmt, check, views = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:] == ["views"]
options = {"check_crc": check} if fmt == "tfrecord" else {}
options["views"] = views
crc = backend_name()  # imports the CRC extension (4-9 ms), as smtk's own imports, before the clock
def consume():
    count = 0
    for _ in open_records(path, fmt, **options):
        count += 1
    return count
gc.collect()  # the interpreter's start-up garbage: not part of any reader's work
started = time.perf_counter()
count = consume()
print(json.dumps({"records": count, "seconds": time.perf_counter() - started, "crc": crc}))
"""

REFERENCE_PARSE = """
import gc, json, sys, time
from sagemaker_training.recordio import _read_recordio
def consume():
    count = 0
    with open(sys.argv[1], "rb") as handle:
        for _ in _read_recordio(handle):
            count += 1
    return count
gc.collect()  # the interpreter's start-up garbage: not part of any reader's work
started = time.perf_counter()
count = consume()
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


def pinned(cpu: int | None) -> Any:
    """A ``preexec_fn`` that pins the child to ``cpu`` (``None``: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


# preexec_fn (PLW1509) is safe here: this process runs no other threads when it forks.
def feeder(source: Path, data_dir: Path, channel: str, cpu: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SMTK, "pipe-feed", "--channel", channel, "--source", str(source), "--data-dir", str(data_dir)],
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(cpu),  # noqa: PLW1509
    )


CEILING_PARSE = """
import gc, json, os, struct, sys, time
def consume():
    count = 0
    fd = os.open(sys.argv[1], os.O_RDONLY)
    while True:
        header = os.read(fd, 8)
        if not header:
            break
        length = struct.unpack("<II", header)[1]
        os.read(fd, length + (-length & 3))
        count += 1
    os.close(fd)
    return count
gc.collect()  # the interpreter's start-up garbage: not part of any reader's work
started = time.perf_counter()
count = consume()
print(json.dumps({"records": count, "seconds": time.perf_counter() - started}))
"""


CRC_FLOOR_PARSE = """
import gc, json, os, sys, time
from google_crc32c import extend  # the C routine smtk uses, imported before the clock
def consume():
    crc = 0
    fd = os.open(sys.argv[1], os.O_RDONLY)
    while chunk := os.read(fd, 1 << 20):
        crc = extend(crc, chunk)
    os.close(fd)
    return crc
gc.collect()  # the interpreter's start-up garbage: not part of any reader's work
started = time.perf_counter()
consume()
print(json.dumps({"records": int(sys.argv[2]), "seconds": time.perf_counter() - started}))
"""


def run_json(argv: list[str], env: dict[str, str] | None = None, cpu: int | None = None) -> dict[str, Any]:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        env=env,
        preexec_fn=pinned(cpu),
    )
    return dict(json.loads(result.stdout))


def raw_read(tmp: Path, size_mb: int, repeat: int, pin: tuple[int, int] | None) -> None:
    writer, reader = pin or (None, None)
    source = tmp / "raw.bin"
    with source.open("wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(size_mb):
            handle.write(block)
    size = source.stat().st_size
    times: dict[str, list[float]] = {"cat": [], "views": [], "chunks": [], "readinto": []}

    def cat_trial(data: Path) -> None:
        feed = feeder(source, data, "cat", writer)
        wait_for_fifo(str(data / "cat_0"))
        started = time.perf_counter()
        with open(os.devnull, "wb") as null:
            subprocess.run(
                ["cat", str(data / "cat_0")],
                stdout=null,
                check=True,
                preexec_fn=pinned(reader),
            )
        times["cat"].append(time.perf_counter() - started)
        feed.wait(timeout=120)

    def smtk_trial(data: Path, how: str) -> None:
        feed = feeder(source, data, "smtk", writer)
        # As for cat: the clock starts once the FIFO exists, not while pipe-feed starts up.
        wait_for_fifo(str(data / "smtk_0"))
        measured = run_json([sys.executable, "-c", READ_EPOCH, str(data / "smtk"), how], cpu=reader)
        assert measured["bytes"] == size, measured
        times[how].append(measured["seconds"])
        feed.wait(timeout=120)

    readers = ("readinto", "views", "chunks")
    trials = [cat_trial] + [lambda data, how=how: smtk_trial(data, how) for how in readers]
    for trial in range(repeat):
        data = tmp / f"raw-{trial}"
        turn = trial % len(trials)
        for run in trials[turn:] + trials[:turn]:
            run(data)
    gib = size / (1 << 30)
    placement = f"writer on CPU {writer}, readers on CPU {reader}" if pin else "not pinned"
    print(f"raw Pipe read, {size_mb} MiB, {repeat} rounds, {placement} (best / median):")
    rows = (
        ("cat", "cat FIFO > /dev/null"),
        ("readinto", "smtk epoch.readinto(buf)"),
        ("views", "smtk epoch.views()"),
        ("chunks", "smtk epoch bytes chunks"),
    )
    for name, label in rows:
        best, median = gib / min(times[name]), gib / statistics.median(times[name])
        rounds = " ".join(f"{gib / seconds:.1f}" for seconds in times[name])
        print(f"  {label:<26}{best:8.2f} GiB/s  {median:8.2f} GiB/s   rounds: {rounds}")
    for name, target in (("readinto", "   (target >= 1.0)"), ("views", ""), ("chunks", "")):
        ratios = [c / t for c, t in zip(times["cat"], times[name], strict=True)]
        print(
            f"  {'ratio ' + name + '/cat':<26}{min(times['cat']) / min(times[name]):8.2f}"
            f"        {statistics.median(ratios):8.2f}{target}"
        )


def parsing(tmp: Path, small: int, large: int, repeat: int) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from smtk.channels.records import write_records

    reference = os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python"))
    have_reference = os.path.exists(reference)
    if not have_reference:
        print(f"reference toolkit not found at {reference}: records/s printed without ratios")
    print(f"\nrecords/s, {repeat} rounds, each run in a fresh process:")
    print(f"  {'records':<9}{'reader':<44}{'best rec/s':>12}{'best/ref':>10}{'median ratio':>14}")
    python_env = dict(os.environ, SMTK_CRC32C="python")
    for label, count, size in (("100 B", small, 100), ("100 KB", large, 100_000)):
        payloads = [os.urandom(size) for _ in range(min(count, 1000))]
        paths = {}
        for fmt in ("recordio", "tfrecord"):
            paths[fmt] = tmp / f"{size}.{fmt}"
            with paths[fmt].open("wb") as sink:
                write_records(sink, (payloads[i % len(payloads)] for i in range(count)), fmt)
        # name -> (argv, env)
        runs: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        if have_reference:
            runs["reference _read_recordio"] = (
                [reference, "-c", REFERENCE_PARSE, str(paths["recordio"])],
                None,
            )
        parse = [sys.executable, "-c", SMTK_PARSE]
        runs["smtk recordio"] = ([*parse, str(paths["recordio"]), "recordio", "1"], None)
        runs["smtk tfrecord, CRC (pure Python)"] = (
            [*parse, str(paths["tfrecord"]), "tfrecord", "1"],
            python_env,
        )
        runs["smtk tfrecord, CRC (auto)"] = ([*parse, str(paths["tfrecord"]), "tfrecord", "1"], None)
        runs["smtk tfrecord, no CRC check"] = ([*parse, str(paths["tfrecord"]), "tfrecord", "0"], None)
        if size >= 65536:
            runs["os.read loop (1-copy ceiling)"] = (
                [sys.executable, "-c", CEILING_PARSE, str(paths["recordio"])],
                None,
            )
            runs["read + CRC32C of every byte (CRC ceiling)"] = (
                [sys.executable, "-c", CRC_FLOOR_PARSE, str(paths["tfrecord"]), str(count)],
                None,
            )
            runs["smtk recordio, views"] = ([*parse, str(paths["recordio"]), "recordio", "1", "views"], None)
            runs["smtk tfrecord, views, no CRC"] = (
                [*parse, str(paths["tfrecord"]), "tfrecord", "0", "views"],
                None,
            )
            runs["smtk tfrecord, views, CRC (auto)"] = (
                [*parse, str(paths["tfrecord"]), "tfrecord", "1", "views"],
                None,
            )
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        backend = ""
        for _ in range(repeat):
            for name, (argv, env) in runs.items():
                measured = run_json(argv, env)
                assert measured["records"] == count, (name, measured)
                seconds[name].append(float(measured["seconds"]))
                if name == "smtk tfrecord, CRC (auto)":
                    backend = str(measured["crc"])
        ref = seconds.get("reference _read_recordio")
        for name, values in seconds.items():
            shown = name.replace("(auto)", f"({backend})")
            rate = count / min(values)
            if ref:
                best_ratio = f"{min(ref) / min(values):.2f}x"
                median_ratio = f"{statistics.median(r / v for r, v in zip(ref, values, strict=True)):.2f}x"
            else:
                best_ratio = median_ratio = "-"
            print(f"  {label:<9}{shown:<44}{rate:>12,.0f}{best_ratio:>10}{median_ratio:>14}")
        print(f"  (target for the smtk rows: >= 3.00x; {count} records of {label})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=512, help="raw read data size (default 512 MiB)")
    parser.add_argument("--small", type=int, default=300_000, help="number of 100 B records")
    parser.add_argument("--large", type=int, default=1000, help="number of 100 KB records")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true", help="leave raw-read processes unpinned")
    parser.add_argument("--part", choices=("all", "raw", "records"), default="all", help="what to measure")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = None if args.no_pin or len(cpus) < 2 else (cpus[0], cpus[1])
    tmp = Path(tempfile.mkdtemp(prefix="smtk-bench-pipe-"))
    try:
        if args.part in ("all", "raw"):
            raw_read(tmp, args.size_mb, args.repeat, pin)
        if args.part in ("all", "records"):
            parsing(tmp, args.small, args.large, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
