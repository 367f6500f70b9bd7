"""``train`` in "pods": namespace hosts named as each Kubernetes operator names its pods.

There is no Kubernetes cluster here. Each test gives every namespace host (smtk.local.netns)
the hostname the operator gives its pod, an ``/etc/hosts`` that resolves what the
operator's headless Service resolves (``<job>-master-0`` for a PyTorchJob's per-pod
Services; ``<hostname>.<subdomain>`` for JobSet, Trainer and Indexed Job pods, whose short
names only resolve on the pod itself), and exactly the variables the operator sets (the
``*_pod`` oracles of tests/unit/test_kubernetes.py). Then plain ``train`` runs on every
host with only ``SMTK_JOB_SPEC`` and ``SMTK_JOB_DIR`` added, as the manifests in
docs/outside-sagemaker.md do.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from smtk.local import netns
from tests.helpers.jobtree import clean_env
from tests.helpers.netns import VENV_BIN, HostRun, require_netns, start_on, wait_all
from tests.integration.test_multihost import TORCH_CRASH
from tests.unit.test_kubernetes import Pod, indexed_pod, jobset_pod, pytorchjob_pod, trainer_pod

TRAIN = os.path.join(VENV_BIN, "train")

TORCH_ALLREDUCE = """
import json, os, socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
assert value.item() == world * (world + 1) / 2, value
hosts = json.loads(os.environ["SM_HOSTS"])
assert os.environ["SM_CURRENT_HOST"] == hosts[rank] == os.environ["SMTK_HOST"]
assert os.environ["SM_CURRENT_HOST"].split(".")[0] == socket.gethostname()
print(f"allreduce ok rank={rank} world={world} host={hosts[rank]} job={os.environ['TRAINING_JOB_NAME']}")
dist.destroy_process_group()
"""

PLAIN = """
import json, os, socket
hosts = json.loads(os.environ["SM_HOSTS"])
print(f"plain ok hosts={','.join(hosts)} current={os.environ['SM_CURRENT_HOST']} host={socket.gethostname()}")
"""

TORCHRUN = {"sagemaker_program": "train.py", "sagemaker_torch_distributed_enabled": "true"}
PLAIN_JOB = {"sagemaker_program": "train.py"}


def _spec(tmp_path: Path, hyperparameters: Mapping[str, str], code: str, count: int) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(code)
    spec = tmp_path / "job.json"
    # No TrainingJobName: the job is named after the operator's job, as on the cluster.
    body = {
        "HyperParameters": {**hyperparameters, "sagemaker_submit_directory": "src"},
        "ResourceConfig": {"InstanceCount": count, "InstanceType": "local"},
    }
    spec.write_text(json.dumps(body))
    return spec


def _hosts_line(address: str, names: list[str]) -> str:
    return f"{address} {' '.join(names)}"


@contextlib.contextmanager
def pods(tmp_path: Path, job: list[Pod], domain: str | None) -> Iterator[netns.Namespaces]:
    """One namespace host per pod, named and resolvable as the operator's pods are."""
    require_netns()
    hostnames = [hostname for _, hostname in job]
    work = tmp_path / "netns"
    work.mkdir()
    with netns.Namespaces(hostnames, str(work)) as spaces:
        for me in hostnames:
            lines = ["127.0.0.1 localhost", "::1 localhost"]
            for other in hostnames:
                address = spaces.addresses[other]
                if domain is None:  # a PyTorchJob's per-pod headless Service: the short name
                    lines.append(_hosts_line(address, [other]))
                elif other == me:  # the kubelet's own line: FQDN and short name
                    lines.append(_hosts_line(address, [f"{other}.{domain}", other]))
                else:  # the headless Service's DNS records: <hostname>.<subdomain>
                    lines.append(_hosts_line(address, [f"{other}.{domain}"]))
            # Rewritten in place: the host's /etc/hosts is a bind mount of this inode.
            with open(spaces.hosts_file(me), "w", encoding="ascii") as handle:
                handle.write("\n".join(lines) + "\n")
        yield spaces


def run_job(
    tmp_path: Path,
    job: list[Pod],
    *,
    domain: str | None,
    hyperparameters: Mapping[str, str],
    code: str,
    extra: Mapping[str, str] | None = None,
    timeout: float = 240.0,
) -> dict[str, HostRun]:
    """``train`` in every pod at once; returns when every one ended."""
    spec = _spec(tmp_path, hyperparameters, code, len(job))
    runs: dict[str, HostRun] = {}
    with pods(tmp_path, job, domain) as spaces:
        for operator_env, hostname in job:
            env = clean_env(
                None,
                **{
                    **operator_env,
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                    "PYTHONUNBUFFERED": "1",
                    "SMTK_JOB_SPEC": str(spec),
                    "SMTK_JOB_DIR": str(tmp_path / "jobs"),
                    "SMTK_READY_TIMEOUT": "120",
                    **(extra or {}),
                },
            )
            runs[hostname] = start_on(spaces, hostname, [TRAIN], env, _tree(tmp_path, hostname))
        wait_all(runs, timeout)
    return runs


def _tree(tmp_path: Path, host: str) -> Path:
    return tmp_path / "jobs" / host


def _ok(tmp_path: Path, runs: dict[str, HostRun], hosts: list[str]) -> None:
    for run, host in zip(runs.values(), hosts, strict=True):
        assert run.exit_status == 0, f"{run.host} failed:\n{run.output[-4000:]}"
        assert (_tree(tmp_path, host) / "output" / "success").exists()


# -- torchrun (gloo) across two pods, one test per operator ------------------------------------

TORCHRUN_JOBS = {
    "pytorchjob": (
        [pytorchjob_pod("mnist", "master", 0, workers=1), pytorchjob_pod("mnist", "worker", 0, workers=1)],
        None,
        ["mnist-master-0", "mnist-worker-0"],
        "mnist",
    ),
    "kubeflow-trainer": (
        [trainer_pod("llama", 2, 0), trainer_pod("llama", 2, 1)],
        "llama",
        ["llama-node-0-0.llama", "llama-node-0-1.llama"],
        "llama",
    ),
    "jobset": (
        # two replicas of a one-pod Job: the second host is job 1, pod 0
        # the variables the documented manifest passes in, no more
        [
            jobset_pod("js", "workers", 2, 1, j, 0, expose=("JOBSET_NAME", "REPLICATED_JOB_REPLICAS"))
            for j in (0, 1)
        ],
        "js",
        ["js-workers-0-0.js", "js-workers-1-0.js"],
        "js",
    ),
}


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("operator", list(TORCHRUN_JOBS))
def test_torchrun_all_reduce(tmp_path: Path, operator: str) -> None:
    job, domain, hosts, name = TORCHRUN_JOBS[operator]
    runs = run_job(tmp_path, job, domain=domain, hyperparameters=TORCHRUN, code=TORCH_ALLREDUCE)
    _ok(tmp_path, runs, hosts)
    for rank, (run, host) in enumerate(zip(runs.values(), hosts, strict=True)):
        assert f"allreduce ok rank={rank} world=2 host={host} job={name}" in run.output, run.output
        resource = json.loads(
            (_tree(tmp_path, host) / "input" / "config" / "resourceconfig.json").read_text()
        )
        assert resource["hosts"] == hosts and resource["current_host"] == host


@pytest.mark.netns
@pytest.mark.slow
def test_indexed_job_plain_hosts_and_current_host(tmp_path: Path) -> None:
    job = [indexed_pod("train", 2, i) for i in range(2)]
    hosts = ["train-0.train", "train-1.train"]
    runs = run_job(tmp_path, job, domain="train", hyperparameters=PLAIN_JOB, code=PLAIN)
    _ok(tmp_path, runs, hosts)
    for index, run in enumerate(runs.values()):
        assert f"plain ok hosts={','.join(hosts)} current={hosts[index]} host=train-{index}" in run.output


@pytest.mark.netns
@pytest.mark.slow
def test_indexed_job_rank_failure_stops_every_pod(tmp_path: Path) -> None:
    job = [indexed_pod("crash", 2, i, SMTK_HOST_DOMAIN="svc") for i in range(2)]
    runs = run_job(
        tmp_path,
        job,
        domain="svc",
        hyperparameters=TORCHRUN,
        code=TORCH_CRASH,
        extra={"SMTK_OUTCOME_LINGER": "5"},
    )
    for run, host in zip(runs.values(), ["crash-0.svc", "crash-1.svc"], strict=True):
        assert run.exit_status not in (None, 0), run.output
        failure = (_tree(tmp_path, host) / "output" / "failure").read_text()
        assert "rank one is broken" in failure, f"{host}:\n{failure}\n{run.output[-3000:]}"


# -- without namespaces: a pod that is not where its variables say -----------------------------


@pytest.mark.slow
def test_a_pod_with_another_pods_hostname_fails_with_exit_status_2(tmp_path: Path) -> None:
    env, _ = indexed_pod("train", 2, 1)
    spec = _spec(tmp_path, PLAIN_JOB, PLAIN, 2)
    root = tmp_path / "tree"
    result = subprocess.run(
        [TRAIN],
        env=clean_env(
            root, **{**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SMTK_JOB_SPEC": str(spec)}
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("ConfigError: hostname: expected '<job>-1'"), failure


@pytest.mark.netns
@pytest.mark.slow
def test_elastic_pytorchjob_standalone(tmp_path: Path) -> None:
    # torchrun takes any PET_<OPTION> as that option's default: the operator's PET_STANDALONE=""
    # (and PET_RDZV_*) must not reach the torchrun smtk starts.
    job = [pytorchjob_pod("bert", "worker", i, workers=2, master=False, elastic=(-1, -1)) for i in range(2)]
    for env, _ in job:
        env["PET_STANDALONE"] = ""  # elasticPolicy.standalone: true (elastic.go)
    runs = run_job(tmp_path, job, domain=None, hyperparameters=TORCHRUN, code=TORCH_ALLREDUCE)
    _ok(tmp_path, runs, ["bert-worker-0", "bert-worker-1"])
