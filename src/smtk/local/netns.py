"""Several "hosts" on one Linux machine: network namespaces on a private bridge (root only).

::

    switch namespace <name>-sw:   br0 ── v0 ── v1 ── v2          (no address; a plain L2 switch)
                                          │     │     │  veth pairs
    host namespace <name>-h0:   eth0 10.N.M.1/24, hostname algo-1, own /etc/hosts
    host namespace <name>-h1:   eth0 10.N.M.2/24, hostname algo-2, own /etc/hosts
    ...

Every address lives inside namespaces made here; the machine's own network, its
``/etc/hosts`` and ``/etc/netns`` are never touched. Each host is held open by one
``sleep`` process that owns its UTS (hostname) and mount namespace, where

- ``/etc/hosts`` is bind-mounted from a per-host file (rewritten in place by
  :meth:`Namespaces.set_hosts`, so a name can start resolving later), and
- the host's job tree is bind-mounted on one common path (``mount_point``), so every
  host sees "its" ``/opt/ml`` at the same place, as on the platform.

Commands run inside with ``nsenter``. :meth:`Namespaces.close` kills every process
left in the namespaces and deletes them; it runs even when setting up failed half way.

::

    with Namespaces(["algo-1", "algo-2"], workdir) as hosts:
        hosts.bind_tree("algo-1", "/tmp/job/algo-1")
        proc = hosts.popen("algo-2", ["train"], env={...})
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from smtk.errors import ConfigError

_counter = itertools.count()
#: Prefix of every namespace made here (``<prefix><pid>-<n>-h<i>``); stale ones are swept.
PREFIX = "smtk"


class NamespaceError(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``/``unshare``, ...)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def available() -> str | None:
    """``None`` when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    search = f"{os.environ.get('PATH', os.defpath)}{os.pathsep}/usr/sbin{os.pathsep}/sbin"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool, path=search) is None:
            return f"{tool} is not installed (iproute2 / util-linux)"
    probe = f"{PREFIX}probe{os.getpid()}-{next(_counter)}"
    try:
        _ip("netns", "add", probe)
    except NamespaceError as exc:
        return f"cannot create a network namespace: {exc}"
    with contextlib.suppress(NamespaceError):
        _ip("netns", "del", probe)
    return None


def sweep_stale() -> None:
    """Delete namespaces left by smtk processes that no longer exist (crashed test runs)."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        digits = name[len(PREFIX) :].split("-", 1)[0].removeprefix("probe")
        if digits.isdigit() and not os.path.exists(f"/proc/{digits}"):
            _kill_pids(name)
            with contextlib.suppress(NamespaceError):
                _ip("netns", "del", name)


def _kill_pids(namespace: str) -> None:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    for word in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


class Namespaces:
    """N hosts in network namespaces joined by a private bridge."""

    def __init__(
        self, hosts: Sequence[str], workdir: str, *, resolvable: Sequence[str] | None = None
    ) -> None:
        if not hosts:
            raise ConfigError("hosts", None, "at least one host", "[]")
        self.hosts = list(hosts)
        self.workdir = workdir
        serial = next(_counter)
        self.name = f"{PREFIX}{os.getpid()}-{serial}"
        # Any private /24 works (it exists only inside these namespaces); vary it anyway.
        self.subnet = f"10.{100 + os.getpid() % 150}.{serial % 250}"
        self.addresses = {host: f"{self.subnet}.{i + 1}" for i, host in enumerate(self.hosts)}
        self.mount_point = os.path.join(workdir, "mnt", "opt", "ml")
        self._resolvable = set(self.hosts if resolvable is None else resolvable)
        self._holders: dict[str, subprocess.Popen[bytes]] = {}
        self._namespaces: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Namespaces:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def namespace(self, host: str) -> str:
        return f"{self.name}-h{self.hosts.index(host)}"

    def hosts_file(self, host: str) -> str:
        return os.path.join(self.workdir, f"{host}.hosts")

    def start(self) -> None:
        sweep_stale()
        os.makedirs(self.mount_point, exist_ok=True)
        switch = f"{self.name}-sw"
        _ip("netns", "add", switch)
        self._namespaces.append(switch)
        _ip("-n", switch, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            ns = self.namespace(host)
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}", "netns", switch)
            _ip("-n", switch, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self._write_hosts(host)
        for host in self.hosts:
            self._hold(host)

    def _hold(self, host: str) -> None:
        script = 'hostname "$1" && mount --bind "$2" /etc/hosts && echo ready && exec sleep infinity'
        argv = [
            "ip", "netns", "exec", self.namespace(host),
            "unshare", "--uts", "--mount", "--propagation", "private",
            "sh", "-c", script, "holder", host, self.hosts_file(host),
        ]  # fmt: skip
        holder = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._holders[host] = holder
        assert holder.stdout is not None
        line = holder.stdout.readline()
        if line.strip() != b"ready":
            holder.kill()
            _, err = holder.communicate()
            raise NamespaceError(f"cannot set up host {host}: {err.decode(errors='replace').strip()}")

    def close(self) -> None:
        """Kill everything inside, delete the namespaces (idempotent, never raises)."""
        for ns in self._namespaces:
            _kill_pids(ns)
        for holder in self._holders.values():
            with contextlib.suppress(OSError):
                holder.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                holder.communicate(timeout=5)
        self._holders.clear()
        for ns in reversed(self._namespaces):
            for _ in range(3):
                try:
                    _ip("netns", "del", ns)
                    break
                except NamespaceError:
                    time.sleep(0.2)
        self._namespaces.clear()

    # -- per host ------------------------------------------------------------------------------

    def _write_hosts(self, host: str) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{self.addresses[h]} {h}" for h in self.hosts if h in self._resolvable or h == host]
        # Rewritten in place: the bind mount follows this inode, not the path.
        with open(self.hosts_file(host), "w", encoding="ascii") as handle:
            handle.write("\n".join(lines) + "\n")

    def set_resolvable(self, names: Sequence[str]) -> None:
        """Make exactly ``names`` resolvable on every host (plus each host's own name)."""
        self._resolvable = set(names)
        for host in self.hosts:
            self._write_hosts(host)

    def bind_tree(self, host: str, root: str) -> None:
        """Show ``root`` at :attr:`mount_point` inside ``host`` (call before starting jobs)."""
        holder = self._holders[host]
        subprocess.run(
            ["nsenter", "-t", str(holder.pid), "--mount", "--", "mount", "--bind", root, self.mount_point],
            check=True,
            capture_output=True,
        )

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host`` (network, hostname and mounts)."""
        pid = str(self._holders[host].pid)
        return ["nsenter", "-t", pid, "--net", "--uts", "--mount", "--", *argv]

    def popen(
        self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            self.command(host, argv), env=dict(env) if env is not None else None, **kwargs
        )
        return proc
