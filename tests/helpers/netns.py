"""Multi-host test harness: real hosts as network namespaces (see smtk.local.netns).

``cluster(tmp_path, hosts, resourceconfig=..., ...)`` makes one namespace per host on a
private /24, gives each its hostname and ``/etc/hosts``, lays out each host's
``/opt/ml`` tree (bind-mounted at one common path inside its namespace), and runs
``train`` on every host. Everything is removed afterwards, also when a test fails.
Tests skip with the reason when namespaces cannot be made (not root, no iproute2).

For MPI, :func:`ssh_setup` makes a throwaway key pair and an sshd config; the
workers' ``train`` starts that sshd itself (``SMTK_SSHD``) and mpirun's ssh uses the
key (``PRTE_MCA_plm_ssh_agent``), so nothing under ``~/.ssh`` or ``/etc/ssh`` changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtk.local import netns
from tests.helpers.jobtree import clean_env, make_tree

VENV_BIN = str(Path(sys.executable).parent)


def require_netns() -> None:
    """Skip the calling test when namespaces cannot be made here."""
    why = netns.available()
    if why is not None:
        pytest.skip(f"multi-host test needs network namespaces: {why}")


@dataclass
class HostRun:
    host: str
    proc: subprocess.Popen[bytes]
    root: Path
    lines: list[str] = field(default_factory=list)
    exit_status: int | None = None
    seconds: float | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def failure(self) -> str | None:
        path = self.root / "output" / "failure"
        return path.read_text() if path.exists() else None

    def failure_json(self) -> dict[str, Any] | None:
        path = self.root / "output" / "failure.json"
        return json.loads(path.read_text()) if path.exists() else None


def resource_config(host: str, hosts: Sequence[str]) -> dict[str, Any]:
    return {"current_host": host, "hosts": list(hosts), "network_interface_name": "eth0"}


def ssh_setup(directory: Path) -> dict[str, str]:
    """A key pair, an sshd config using it, and the variables that make smtk/mpirun use them."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    host_key = directory / "host_ed25519"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    (directory / "authorized_keys").write_text((directory / "id_ed25519.pub").read_text())
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                "PermitRootLogin yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PidFile none",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    ssh = (
        f"ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o LogLevel=ERROR -o BatchMode=yes"
    )
    return {
        "SMTK_SSHD": f"/usr/sbin/sshd -f {config}",
        "PRTE_MCA_plm_ssh_agent": ssh,
        "OMPI_MCA_plm_rsh_agent": ssh,
    }


class Cluster:
    """Namespaced hosts with one job tree each; :meth:`run` starts ``train`` everywhere."""

    def __init__(self, spaces: netns.Namespaces, roots: dict[str, Path]) -> None:
        self.spaces = spaces
        self.roots = roots

    @property
    def hosts(self) -> list[str]:
        return self.spaces.hosts

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = clean_env(
            Path(self.spaces.mount_point),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            OMPI_ALLOW_RUN_AS_ROOT="1",
            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
            PYTHONUNBUFFERED="1",
        )
        env["SAGEMAKER_BASE_DIR"] = self.spaces.mount_point
        env.update(extra or {})
        return env

    def start(self, host: str, extra: Mapping[str, str] | None = None, argv: Sequence[str] = ()) -> HostRun:
        command = list(argv) or [os.path.join(VENV_BIN, "train")]
        return start_on(self.spaces, host, command, self.environ(extra), self.roots[host])

    def run(
        self,
        extra: Mapping[str, str] | None = None,
        *,
        hosts: Sequence[str] | None = None,
        timeout: float = 180.0,
    ) -> dict[str, HostRun]:
        """Start ``train`` on ``hosts`` (default all) at once and wait for every one."""
        runs = {host: self.start(host, extra) for host in (hosts or self.hosts)}
        return wait_all(runs, timeout)


def start_on(
    spaces: netns.Namespaces, host: str, argv: Sequence[str], env: Mapping[str, str], root: Path
) -> HostRun:
    """Start ``argv`` on ``host`` and follow its output (wait for it with :func:`wait_all`)."""
    proc = spaces.popen(
        host,
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    run = HostRun(host, proc, root)
    started = time.monotonic()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            run.lines.append(raw.decode(errors="replace").rstrip("\n"))
        run.exit_status = proc.wait()
        run.seconds = time.monotonic() - started

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    run._thread = thread  # type: ignore[attr-defined]
    return run


def wait_all(runs: dict[str, HostRun], timeout: float) -> dict[str, HostRun]:
    deadline = time.monotonic() + timeout
    for run in runs.values():
        thread: threading.Thread = run._thread  # type: ignore[attr-defined]
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            for other in runs.values():
                with contextlib.suppress(OSError):
                    other.proc.kill()
            outputs = "\n\n".join(f"== {r.host}\n{r.output[-3000:]}" for r in runs.values())
            raise AssertionError(f"train on {run.host} did not finish within {timeout:g} s\n{outputs}")
    return runs


@contextlib.contextmanager
def cluster(
    tmp_path: Path,
    hosts: Sequence[str],
    *,
    hyperparameters: Mapping[str, Any],
    code: Mapping[str, str],
    resolvable: Sequence[str] | None = None,
    resourceconfig: Any = resource_config,
) -> Iterator[Cluster]:
    """Namespaced hosts with their trees laid out; everything removed on exit."""
    require_netns()
    roots: dict[str, Path] = {}
    for host in hosts:
        roots[host] = make_tree(
            tmp_path / host,
            hyperparameters=hyperparameters,
            resourceconfig=resourceconfig(host, hosts),
            code=code,
        )
    work = tmp_path / "netns"
    work.mkdir()
    with netns.Namespaces(list(hosts), str(work), resolvable=resolvable) as spaces:
        for host in hosts:
            spaces.bind_tree(host, str(roots[host]))
        yield Cluster(spaces, roots)


def have_sshd() -> str | None:
    if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh") is None:
        return "needs openssh-server (/usr/sbin/sshd) and ssh"
    return None
