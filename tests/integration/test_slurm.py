"""``train`` under a real Slurm cluster built on this machine: one ``slurmd`` per namespace host.

The cluster (Debian's ``slurm-wlm`` and ``munge``, installed by scripts/test.sh):

- one private ``munged`` (its own key and socket in the test's directory), which every
  daemon and client reaches through ``AuthInfo=socket=...``;
- hosts ``algo-1``, ``algo-2`` in network namespaces on a private bridge
  (:class:`smtk.local.netns.Namespaces`); each ``slurmd`` runs inside its host's network
  namespace with its own hostname and ``/etc/hosts`` (``nsenter --net`` then
  ``unshare --uts --mount``: ``ip netns exec`` remounts ``/sys`` and slurmd 22.05 then
  fails on cgroups, see the lab notes);
- ``slurmctld`` in algo-1's network namespace under the name ``slmctl``; ``srun``,
  ``squeue`` and ``scancel`` run there too (slurmd connects back to srun).

Each test runs ``srun --nodes 2 --ntasks-per-node 1 train`` with ``SMTK_JOB_SPEC`` and a
shared ``SMTK_JOB_DIR``, and reads both hosts' trees afterwards. Without root, namespaces
or the Slurm daemons the tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtk.local import netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTS = ["algo-1", "algo-2"]
BIN = Path(sys.executable).parent
DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "scancel", "squeue")


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _missing() -> str | None:
    reason = netns.available()
    if reason is not None:
        return reason
    for tool in DAEMONS:
        if _which(tool) is None:
            return f"{tool} is not installed (apt-get install slurm-wlm munge; scripts/test.sh does it)"
    return None


@dataclass
class Cluster:
    """A running Slurm cluster and how to run its client commands."""

    workdir: Path
    conf: Path
    hosts: netns.Namespaces
    #: host -> its slurmd's pid (its mount namespace is the one the host's tasks see)
    slurmd: dict[str, int]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The clients' environment: this machine's, minus any Slurm or smtk job variables."""
        values = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SMTK_", "SM_"))}
        values.update(
            SLURM_CONF=str(self.conf),
            PATH=f"{BIN}:{values.get('PATH', '/usr/bin:/bin')}",
            SMTK_READY_TIMEOUT="60",
            SMTK_GRACE_PERIOD="3",
            SMTK_OUTCOME_LINGER="5",
            SMTK_PEER_ABORT_GRACE="3",
        )
        values.update(extra or {})
        return values

    def client(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the controller's network (where srun is reachable from every node)."""
        return ["nsenter", f"--net=/run/netns/{self.hosts.namespace(HOSTS[0])}", "--", *argv]

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30) -> str:
        proc = subprocess.run(
            self.client(argv),
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        return proc.stdout


def _conf(workdir: Path, addresses: Mapping[str, str]) -> Path:
    lines = [
        "ClusterName=slm",
        f"SlurmctldHost=slmctl({addresses[HOSTS[0]]})",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={workdir / 'munge.socket'}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={workdir / 'state'}",
        f"SlurmdSpoolDir={workdir / 'spool-%n'}",
        f"SlurmctldPidFile={workdir / 'slurmctld.pid'}",
        f"SlurmdPidFile={workdir / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={workdir / 'slurmctld.log'}",
        f"SlurmdLogFile={workdir / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "KillWait=5",
        "MailProg=/bin/true",
        "MpiDefault=none",
    ]
    cpus = os.cpu_count() or 1
    lines += [f"NodeName={h} NodeAddr={addresses[h]} CPUs={cpus} State=UNKNOWN" for h in HOSTS]
    lines.append("PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    path = workdir / "slurm.conf"
    path.write_text("\n".join(lines) + "\n")
    (workdir / "state").mkdir()
    return path


def _start(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=dict(env))


def _wait_for(what: str, ready: object, timeout: float, logs: Sequence[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} not ready after {timeout} s\n{tails}")


@pytest.fixture(scope="module")
def slurm() -> Iterator[Cluster]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="slm-cluster-"))
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    hosts = netns.Namespaces(HOSTS, str(workdir / "ns"))
    try:
        hosts.start()
        conf = _conf(workdir, hosts.addresses)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_CONF": str(conf)}
        key = workdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munged = [
            _which("munged") or "munged", "--foreground", "--force", f"--key-file={key}",
            f"--socket={workdir / 'munge.socket'}", f"--pid-file={workdir / 'munged.pid'}",
            f"--seed-file={workdir / 'munge.seed'}", f"--log-file={workdir / 'munged.log'}",
        ]  # fmt: skip
        procs.append(_start(munged, workdir / "munged.out", env))
        _wait_for("munged", (workdir / "munge.socket").exists, 10, [workdir / "munged.out"])
        ns0 = f"--net=/run/netns/{hosts.namespace(HOSTS[0])}"
        ctld = ["nsenter", ns0, "unshare", "--uts", "sh", "-c", 'hostname slmctl && exec "$@"', "ctl",
                _which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(conf)]  # fmt: skip
        procs.append(_start(ctld, workdir / "slurmctld.out", env))
        for host in HOSTS:
            script = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
            slurmd = [
                "nsenter", f"--net=/run/netns/{hosts.namespace(host)}",
                "unshare", "--uts", "--mount", "--propagation", "private",
                "sh", "-c", script, "node", host, hosts.hosts_file(host),
                _which("slurmd") or "slurmd", "-D", "-N", host, "-f", str(conf),
            ]  # fmt: skip
            procs.append(_start(slurmd, workdir / f"slurmd-{host}.out", env))
            pids[host] = procs[-1].pid  # nsenter, unshare and sh exec: the pid is slurmd's
        cluster = Cluster(workdir, conf, hosts, pids)

        def idle() -> bool:
            proc = subprocess.run(
                cluster.client(["sinfo", "-h", "-N", "-o", "%N %t"]),
                env=cluster.env(), capture_output=True, text=True, check=False, timeout=10,
            )  # fmt: skip
            return proc.returncode == 0 and proc.stdout.count("idle") == len(HOSTS)

        logs = sorted(workdir.glob("*.out")) + sorted(workdir.glob("*.log"))
        _wait_for("the Slurm cluster", idle, 30, logs)
        yield cluster
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=3)  # slurmd may wait for its steps; nothing of this cluster is kept
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        hosts.close()
        shutil.rmtree(workdir, ignore_errors=True)


# -- jobs ------------------------------------------------------------------------------------------

ALLREDUCE = """
import json, os, socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
seen = {k: os.environ.get(k) for k in ("SM_HOSTS", "SM_CURRENT_HOST", "RANK", "WORLD_SIZE", "SLURMD_NODENAME",
                                       "SM_NUM_GPUS", "TRAINING_JOB_NAME", "MY_SETTING")}
seen.update(hostname=socket.gethostname(), sum=value.item(), argv=__import__("sys").argv[1:])
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], f"rank-{rank}.json"), "w") as out:
    json.dump(seen, out)
if rank == 0:
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w") as out:
        out.write(str(value.item()))
dist.destroy_process_group()
"""

CRASH = """
import os, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
if os.environ["SM_CURRENT_HOST"] == "algo-2":
    raise ValueError("rank on algo-2 is broken")
time.sleep(300)  # stopped by the status channel long before this ends
"""

STOPPABLE = """
import os, signal, sys, time
MARK = os.path.join(os.environ["SMTK_TEST_MARKS"], os.environ["SM_CURRENT_HOST"])
def stopped(signum, frame):
    # algo-2 saves for a while: still inside its grace period when algo-1 reports its stop
    time.sleep(1.0 if os.environ["SM_CURRENT_HOST"] == "algo-2" else 0.0)
    with open(MARK + ".stopped", "w") as out:
        out.write(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stopped)
open(MARK + ".started", "w").close()
time.sleep(300)
"""


def _spec(tmp: Path, script: str, hyperparameters: Mapping[str, object], *, torchrun: bool = True) -> Path:
    code = tmp / "code"
    code.mkdir()
    (code / "train.py").write_text(script)
    data = tmp / "data"
    data.mkdir()
    (data / "part-0.txt").write_text("0\n")
    spec = {
        "HyperParameters": {
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": "code",
            "sagemaker_torch_distributed_enabled": json.dumps(torchrun),
            **{k: json.dumps(v) for k, v in hyperparameters.items()},
        },
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "data"}}}],
        "Environment": {"MY_SETTING": "from-the-spec"},
        "OutputDataConfig": {"S3OutputPath": str(tmp / "out")},
    }
    path = tmp / "job.json"
    path.write_text(json.dumps(spec))
    return path


def _srun(tmp: Path, name: str) -> list[str]:
    """One ``train`` per node, as docs/outside-sagemaker.md says."""
    return ["srun", "--nodes", "2", "--ntasks-per-node", "1", "--job-name", name, f"--chdir={tmp}", "train"]


def _job_env(slurm: Cluster, tmp: Path, spec: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return slurm.env({"SMTK_JOB_SPEC": str(spec), "SMTK_JOB_DIR": str(tmp / "jobs"), **(extra or {})})


def _failure(tmp: Path, host: str) -> dict[str, object]:
    record: dict[str, object] = json.loads((tmp / "jobs" / host / "output" / "failure.json").read_text())
    return record


def test_two_node_torchrun_all_reduce(slurm: Cluster, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    spec = _spec(tmp_path, ALLREDUCE, {"epochs": 2})
    proc = subprocess.run(
        slurm.client(_srun(tmp_path, "allreduce")),
        env=_job_env(slurm, tmp_path, spec),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    seen = {}
    for rank, host in enumerate(HOSTS):
        tree = tmp_path / "jobs" / host
        assert (tree / "output" / "success").exists()
        seen[rank] = json.loads((tree / "output" / "data" / f"rank-{rank}.json").read_text())
    for rank, host in enumerate(HOSTS):
        assert (
            seen[rank]["SM_CURRENT_HOST"] == seen[rank]["hostname"] == seen[rank]["SLURMD_NODENAME"] == host
        )
        assert json.loads(seen[rank]["SM_HOSTS"]) == HOSTS
        assert (seen[rank]["RANK"], seen[rank]["WORLD_SIZE"]) == (str(rank), "2")
        assert seen[rank]["sum"] == 3.0
        assert seen[rank]["MY_SETTING"] == "from-the-spec"
        assert seen[rank]["argv"] == ["--epochs", "2"]
    job_name = seen[0]["TRAINING_JOB_NAME"]
    assert job_name.startswith("allreduce-") and job_name[len("allreduce-") :].isdigit()
    # Outputs where the platform puts them: <output path>/<job name>/output/model.tar.gz
    stored = tmp_path / "out" / job_name / "output"
    assert sorted(p.name for p in stored.iterdir()) == ["model.tar.gz", "output.tar.gz"]
    with tarfile.open(stored / "model.tar.gz") as tar:
        assert tar.getnames() == ["model.txt"]


def test_failed_rank_stops_every_node_with_its_root_cause(slurm: Cluster, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    spec = _spec(tmp_path, CRASH, {})
    started = time.monotonic()
    proc = subprocess.run(
        slurm.client(_srun(tmp_path, "crash")),
        env=_job_env(slurm, tmp_path, spec),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode != 0
    assert took < 150, f"the healthy node was not stopped: the job took {took:.0f} s"
    for host in HOSTS:
        failure = (tmp_path / "jobs" / host / "output" / "failure").read_text()
        assert failure.splitlines()[0].startswith("ValueError: rank on algo-2 is broken"), (host, failure)
        record = _failure(tmp_path, host)
        assert record["host"] == "algo-2", (host, record)
        assert not (tmp_path / "jobs" / host / "output" / "success").exists()


@pytest.mark.parametrize("torchrun", [False, True], ids=["plain", "torchrun"])
def test_scancel_reaches_the_user_code_as_a_stop(slurm: Cluster, tmp_path: Path, torchrun: bool) -> None:
    tmp_path.chmod(0o755)
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each node's train stops its own code and keeps its grace period, also with torchrun,
    # where the first node to report "Stopped" reaches the other over the status channel.
    spec = _spec(tmp_path, STOPPABLE, {}, torchrun=torchrun)
    env = _job_env(slurm, tmp_path, spec, {"SMTK_TEST_MARKS": str(marks)})
    proc = subprocess.Popen(
        slurm.client(_srun(tmp_path, "cancelled")),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(
            "the user code on both nodes",
            lambda: all((marks / f"{h}.started").exists() for h in HOSTS) or proc.poll() is not None,
            180,
            [],
        )
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        job_id = slurm.run(["squeue", "-h", "-n", "cancelled", "-o", "%i"]).strip()
        assert job_id.isdigit(), job_id
        slurm.run(["scancel", job_id])
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    for host in HOSTS:
        assert (marks / f"{host}.stopped").read_text() == str(int(signal.SIGTERM)), output[-4000:]
        failure = (tmp_path / "jobs" / host / "output" / "failure").read_text()
        assert failure.startswith("Stopped: train received SIGTERM"), (host, failure)
        record = _failure(tmp_path, host)
        assert record["exit_status"] == 128 + signal.SIGTERM, record


def _run_with_node_local(
    slurm: Cluster, tmp_path: Path, name: str, place: Callable[[Path, list[str]], Path]
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a 2-node job whose spec ``place(local, inside)`` returns, where ``local`` is a
    tmpfs seen only by algo-1's tasks (its slurmd's mount namespace) and ``inside`` runs a
    command there; returns the run and how long it took."""
    tmp_path.chmod(0o755)
    local = tmp_path / "node-local"
    local.mkdir()
    inside = ["nsenter", "-t", str(slurm.slurmd["algo-1"]), "--mount", "--"]
    subprocess.run([*inside, "mount", "-t", "tmpfs", "tmpfs", str(local)], check=True, timeout=10)
    try:
        spec = place(local, inside)
        started = time.monotonic()
        proc = subprocess.run(
            slurm.client(_srun(tmp_path, name)),
            env=_job_env(slurm, tmp_path, spec),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        return proc, time.monotonic() - started
    finally:
        subprocess.run([*inside, "umount", str(local)], check=False, timeout=10)


def _stopped_at_once_by_algo_2(
    tmp_path: Path, proc: subprocess.CompletedProcess[str], took: float, first_line: str
) -> None:
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert took < 50, f"algo-1 waited for algo-2 ({took:.0f} s): its failure did not reach it"
    for host in HOSTS:
        failure = (tmp_path / "jobs" / host / "output" / "failure").read_text()
        assert failure.splitlines()[0].startswith(first_line), (host, failure)
        assert _failure(tmp_path, host)["host"] == "algo-2", host


def test_a_node_that_fails_before_its_job_starts_stops_the_others(slurm: Cluster, tmp_path: Path) -> None:
    """Data on a node-local disk that one node lacks: that node fails while laying out its
    tree, and the other stops at once (not after SMTK_READY_TIMEOUT) with that cause."""

    def place(local: Path, inside: list[str]) -> Path:
        subprocess.run([*inside, "sh", "-c", f"mkdir {local}/data && echo 1 > {local}/data/a"], check=True)
        spec = _spec(tmp_path, ALLREDUCE, {})
        document = json.loads(spec.read_text())
        document["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = str(local / "data")
        spec.write_text(json.dumps(document))
        return spec

    proc, took = _run_with_node_local(slurm, tmp_path, "nodelocal", place)
    _stopped_at_once_by_algo_2(tmp_path, proc, took, "ConfigError: channel 'train'")


def test_a_node_without_the_spec_stops_the_others_with_its_cause(slurm: Cluster, tmp_path: Path) -> None:
    """The spec on a node-local disk that one node lacks: that node cannot read the job at
    all (no tree, no launcher known), and still tells the other, which stops at once."""

    def place(local: Path, inside: list[str]) -> Path:
        spec = _spec(tmp_path, ALLREDUCE, {})
        document = json.loads(spec.read_text())  # paths made absolute: the spec moves
        document["HyperParameters"]["sagemaker_submit_directory"] = str(tmp_path / "code")
        document["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = str(tmp_path / "data")
        spec.write_text(json.dumps(document))
        subprocess.run([*inside, "cp", str(spec), str(local / "job.json")], check=True, timeout=10)
        return local / "job.json"

    proc, took = _run_with_node_local(slurm, tmp_path, "nospec", place)
    _stopped_at_once_by_algo_2(tmp_path, proc, took, "ConfigError: job.json: expected the file to exist")
