"""The status channel at platform sizes: one master's session against N simulated members.

    .venv/bin/python benchmarks/status_channel.py [--members 128 256 512 1024] [--rounds 3]

The master is smtk's real :class:`~smtk.cluster.session.Session` (its hub, its readiness
wait, its settle), in this process, on loopback. The members are simulated by one
selector loop of raw sockets speaking the wire format (``hello``, ``ready``, ``done``),
so that what is measured is the master's side, not N member threads. Every host name
maps to 127.0.0.1 (``SMTK_HOST_ADDRESSES``), as ``smtk local`` does.

Phases, each timed from its start:

- **join**: every member connects and says hello, until the master's hub has them all;
- **all ready**: members send ``ready``; the master's ``wait_ready`` (which also probes
  every member's name) returns; the master marks itself ready and every member has
  received that ``ready``;
- **fan-in**: every member sends its outcome (``done``, exit status 0) until the master
  has all of them; then the master settles and every member has the master's outcome.

It also prints, for the master: the threads it runs (beyond this process's own), its
open sockets, and the memory allocated by smtk's cluster code (``tracemalloc``, filtered
to ``smtk/cluster``), so growth with N shows. Targets (the issue): all ready in < 2 s at
1,024 members, and nothing in the master growing faster than linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from smtk.cluster import wire
from smtk.cluster.probe import Peer
from smtk.cluster.session import Session
from smtk.environment import Environment
from smtk.failure import Success
from smtk.stop import Stop


def _tree(base: Path, hosts: list[str]) -> Path:
    root = base / "opt" / "ml"
    (root / "input" / "config").mkdir(parents=True)
    hps = {"sagemaker_program": '"train.py"', "sagemaker_torch_distributed_enabled": "true"}
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    resource_config = {"current_host": hosts[0], "hosts": hosts, "network_interface_name": "lo"}
    (root / "input/config/resourceconfig.json").write_text(json.dumps(resource_config))
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Members:
    """N members on raw non-blocking sockets, driven by one selector loop in a thread."""

    def __init__(self, names: list[str], port: int) -> None:
        self.names = names
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.socks: dict[socket.socket, str] = {}
        self.buffers: dict[socket.socket, wire.LineBuffer] = {}
        self.got: dict[str, set[str]] = {name: set() for name in names}
        self.lock = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def connect(self) -> None:
        for name in self.names:
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.sendall(wire.encode(wire.hello(name)))
            sock.setblocking(False)
            self.socks[sock] = name
            self.buffers[sock] = wire.LineBuffer()
            self.selector.register(sock, selectors.EVENT_READ)
        self.thread.start()

    def send_all(self, message_of: object) -> None:
        for sock, name in self.socks.items():
            sock.setblocking(True)
            sock.sendall(wire.encode(message_of(name)))  # type: ignore[operator]
            sock.setblocking(False)

    def wait_got(self, kind: str, timeout: float = 120) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: all(kind in g for g in self.got.values()), timeout):
                missing = sum(kind not in g for g in self.got.values())
                raise SystemExit(f"{missing} members never got {kind!r}")

    def _loop(self) -> None:
        while not self.stopped:
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(sock)
                    continue
                name = self.socks[sock]  # type: ignore[index]
                for line in self.buffers[sock].feed(data):  # type: ignore[index]
                    kinds = set(wire.decode(line))
                    with self.lock:
                        self.got[name] |= kinds
                        self.lock.notify_all()

    def close(self) -> None:
        self.stopped = True
        self.thread.join(5)
        for sock in self.socks:
            sock.close()
        self.selector.close()


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def one_round(count: int) -> dict[str, float]:
    hosts = [f"algo-{i}" for i in range(1, count + 2)]
    port = _free_port()
    environ = {
        "SMTK_HOST_ADDRESSES": ",".join(f"{h}=127.0.0.1" for h in hosts),
        "SMTK_STATUS_PORT": str(port),
        "SMTK_OUTCOME_LINGER": "0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = Environment(root=_tree(Path(tmp), hosts), environ=environ)
        base_threads = threading.active_count()
        base_sockets = _open_sockets()
        tracemalloc.start()
        session = Session(env, Stop(), [], hosts)
        members = Members(hosts[1:], port)
        result: dict[str, float] = {}
        try:
            started = time.perf_counter()
            members.connect()
            with session.cond:
                session.cond.wait_for(lambda: len(session.hub.connected()) == count, 120)
            result["join"] = time.perf_counter() - started

            started = time.perf_counter()
            members.send_all(wire.ready)
            waiter = threading.Thread(target=session.wait_ready, args=(_probes(hosts[1:]), 120))
            waiter.start()
            waiter.join()
            session.mark_ready()
            members.wait_got("ready")
            result["all ready"] = time.perf_counter() - started
            result["master threads"] = threading.active_count() - base_threads - 1  # minus the members' loop

            started = time.perf_counter()
            members.send_all(lambda name: wire.done(wire.outcome(name, 0, None)))
            with session.cond:
                session.cond.wait_for(lambda: len(session.done_members) == count, 120)
            session.settle(Success(host=hosts[0]))
            members.wait_got("done")
            result["fan-in"] = time.perf_counter() - started
            result["master sockets"] = _open_sockets() - base_sockets - count  # minus the members' ends
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*smtk/cluster/*")]
            )
            result["cluster KiB"] = sum(stat.size for stat in snapshot.statistics("filename")) / 1024
        finally:
            tracemalloc.stop()
            session.close()
            members.close()
    return result


def _probes(names: list[str]) -> list[Peer]:
    return [Peer(name, None, "train ready") for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(args.members) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    columns = ["join", "all ready", "fan-in", "master threads", "master sockets", "cluster KiB"]
    print(
        f"status channel: one master session, N simulated members on loopback, median of {args.rounds} rounds"
    )
    print(f"  {'members':>8}  " + "  ".join(f"{c:>14}" for c in columns) + "  per member: KiB")
    for count in args.members:
        rounds = [one_round(count) for _ in range(args.rounds)]
        median = {c: statistics.median(r[c] for r in rounds) for c in columns}
        cells = []
        for column in columns:
            value = median[column]
            cells.append(
                f"{value:>12.3f} s" if column in ("join", "all ready", "fan-in") else f"{value:>14.0f}"
            )
        print(f"  {count:>8}  " + "  ".join(cells) + f"  {median['cluster KiB'] / count:>14.2f}")
        sys.stdout.flush()
    print("  targets: all ready < 2 s at 1024 members; threads constant, sockets and memory linear in N")


if __name__ == "__main__":
    main()
