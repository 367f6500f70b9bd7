"""smtk.scheduler.kubernetes against the environment each operator gives its pods.

The ``*_pod`` builders below write down, variable by variable, what each operator's
source sets in a pod (see the module docstring of smtk.scheduler.kubernetes for the
files): they are the oracle. Every pod of a simulated job must then agree on one host
list in node-rank order, find itself at the rank the operator gave it, and carry the
hostname that its entry predicts. The error table changes one thing at a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smtk.errors import ConfigError
from smtk.scheduler import kubernetes
from smtk.scheduler.kubernetes import detected, kind, placement
from smtk.scheduler.placement import Placement

Pod = tuple[dict[str, str], str]  # (environment, hostname)

#: What the kubelet puts in every container, whatever started the pod.
KUBELET = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "PATH": "/usr/bin"}


def trainer_pod(trainjob: str, nodes: int, rank: int, nproc: str = "auto") -> Pod:
    """kubeflow/trainer v2 torch plugin: PET_* on the "node" container, an Indexed Job pod of a JobSet."""
    env = {
        **KUBELET,
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": nproc,
        "PET_NODE_RANK": str(rank),  # fieldRef: batch.kubernetes.io/job-completion-index
        "PET_MASTER_ADDR": f"{trainjob}-node-0-0.{trainjob}",
        "PET_MASTER_PORT": "29500",
        "JOB_COMPLETION_INDEX": str(rank),  # the Job controller, in every container
    }
    return env, f"{trainjob}-node-0-{rank}"


def pytorchjob_pod(
    job: str,
    rtype: str,
    index: int,
    *,
    workers: int,
    master: bool = True,
    version: str = "1.9",
    nproc: str | None = None,
    elastic: tuple[int, int] | None = None,
    port: int = 23456,
) -> Pod:
    """kubeflow/training-operator pkg/controller.v1/pytorch/envvar.go (setPodEnv), master.go, elastic.go."""
    total = workers + (1 if master else 0)
    env = {**KUBELET, "PYTHONUNBUFFERED": "1" if version >= "1.7" else "0"}
    new = version >= "1.7"
    if master:
        rank = index + 1 if rtype == "worker" else index
        env["MASTER_PORT"] = str(port)
        env["MASTER_ADDR"] = f"{job}-master-0"
        if new:
            env["PET_MASTER_PORT"] = str(port)
            env["PET_MASTER_ADDR"] = f"{job}-master-0"
        per_node = int(nproc) if nproc is not None and nproc.isdigit() else 1
        env["WORLD_SIZE"] = str(total * per_node if new else total)
        env["RANK"] = str(rank)
        if new:
            env["PET_NODE_RANK"] = str(rank)
    if new and nproc is not None:
        env["PET_NPROC_PER_NODE"] = nproc
    if elastic is not None:
        env["PET_RDZV_ENDPOINT"] = f"{job}-worker-0:{port}"
        env["PET_RDZV_BACKEND"] = "c10d"
        low, high = elastic
        env["PET_NNODES"] = str(workers) if low < 0 else f"{low}:{high}"
    elif new:
        env["PET_NNODES"] = str(total)
    return env, f"{job}-{rtype}-{index}"


def jobset_pod(
    jobset: str,
    replicated: str,
    replicas: int,
    completions: int,
    job_index: int,
    pod: int,
    *,
    expose: tuple[str, ...] = ("JOBSET_NAME", "REPLICATED_JOB_NAME", "REPLICATED_JOB_REPLICAS", "JOB_INDEX"),
) -> Pod:
    """JobSet annotations passed in through the downward API, as docs/outside-sagemaker.md's manifest does."""
    annotations = {
        "JOBSET_NAME": jobset,  # jobset.sigs.k8s.io/jobset-name
        "REPLICATED_JOB_NAME": replicated,  # jobset.sigs.k8s.io/replicatedjob-name
        "REPLICATED_JOB_REPLICAS": str(replicas),  # jobset.sigs.k8s.io/replicatedjob-replicas
        "JOB_INDEX": str(job_index),  # jobset.sigs.k8s.io/job-index
    }
    env = {
        **KUBELET,
        **{name: value for name, value in annotations.items() if name in expose},
        "JOB_COMPLETION_INDEX": str(pod),
        "SMTK_HOST_COUNT": str(replicas * completions),
    }
    # The Job is <jobset>-<replicatedJob>-<jobIndex>; the Job controller names the pod's host <job>-<index>.
    return env, f"{jobset}-{replicated}-{job_index}-{pod}"


def indexed_pod(job: str, completions: int, index: int, **extra: str) -> Pod:
    """kubernetes pkg/controller/job: JOB_COMPLETION_INDEX and hostname <job>-<index>."""
    env = {**KUBELET, "JOB_COMPLETION_INDEX": str(index), "SMTK_HOST_COUNT": str(completions), **extra}
    return env, f"{job}-{index}"


def _agree(pods: list[Pod], scheduler: str) -> tuple[str, ...]:
    """Every pod's placement: one host list, each pod at its own rank with its own hostname."""
    places = [placement(env, host) for env, host in pods]
    hosts = places[0].hosts
    assert len(hosts) == len(pods) == len(set(hosts))
    for rank, ((env, hostname), place) in enumerate(zip(pods, places, strict=True)):
        assert detected(env) and kind(env) == scheduler
        assert place.scheduler == scheduler and place.hosts == hosts and place.gpus is None
        assert place.current_host == hosts[rank] and place.index == rank
        assert place.current_host.partition(".")[0] == hostname
        assert place.job_name == places[0].job_name
    return hosts


# -- one job per operator, every pod ---------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2, 5])
def test_trainer(nodes: int) -> None:
    pods = [trainer_pod("llama", nodes, rank, nproc="4") for rank in range(nodes)]
    hosts = _agree(pods, kubernetes.TRAINER)
    assert hosts == tuple(f"llama-node-0-{i}.llama" for i in range(nodes))
    assert hosts[0] == pods[0][0]["PET_MASTER_ADDR"]
    assert placement(*pods[0]).job_name == "llama"


@pytest.mark.parametrize("version", ["1.5", "1.6", "1.7", "1.9"])
@pytest.mark.parametrize(("workers", "nproc"), [(0, None), (1, None), (3, "8"), (2, "auto")])
def test_pytorchjob_with_master(version: str, workers: int, nproc: str | None) -> None:
    def pod(rtype: str, index: int) -> Pod:
        return pytorchjob_pod("mnist", rtype, index, workers=workers, version=version, nproc=nproc)

    pods = [pod("master", 0), *(pod("worker", i) for i in range(workers))]
    hosts = _agree(pods, kubernetes.PYTORCHJOB)
    assert hosts == ("mnist-master-0", *(f"mnist-worker-{i}" for i in range(workers)))
    assert hosts[0] == pods[1 % len(pods)][0]["MASTER_ADDR"]
    assert placement(*pods[0]).job_name == "mnist"


@pytest.mark.parametrize("elastic", [(-1, -1), (3, 3)])
def test_pytorchjob_elastic_workers_only(elastic: tuple[int, int]) -> None:
    pods = [pytorchjob_pod("bert", "worker", i, workers=3, master=False, elastic=elastic) for i in range(3)]
    assert "RANK" not in pods[1][0]  # the pod's index is only in its name
    hosts = _agree(pods, kubernetes.PYTORCHJOB)
    assert hosts == ("bert-worker-0", "bert-worker-1", "bert-worker-2")


def test_pytorchjob_elastic_with_master() -> None:
    pods = [pytorchjob_pod("gpt", "master", 0, workers=2, elastic=(3, 3))]
    pods += [pytorchjob_pod("gpt", "worker", i, workers=2, elastic=(3, 3)) for i in range(2)]
    assert _agree(pods, kubernetes.PYTORCHJOB) == ("gpt-master-0", "gpt-worker-0", "gpt-worker-1")


@pytest.mark.parametrize(("replicas", "completions"), [(1, 1), (1, 4), (2, 2), (3, 1)])
def test_jobset(replicas: int, completions: int) -> None:
    pods = [
        jobset_pod("pytorch", "workers", replicas, completions, j, p)
        for j in range(replicas)
        for p in range(completions)
    ]
    hosts = _agree(pods, kubernetes.JOBSET)
    assert hosts[0] == "pytorch-workers-0-0.pytorch"  # the coordinator JobSet's examples use
    assert hosts[-1] == f"pytorch-workers-{replicas - 1}-{completions - 1}.pytorch"
    assert placement(*pods[0]).job_name == "pytorch"


def test_jobset_needs_only_its_name_with_one_replica() -> None:
    pods = [jobset_pod("js", "trainer", 1, 3, 0, p, expose=("JOBSET_NAME",)) for p in range(3)]
    assert _agree(pods, kubernetes.JOBSET) == ("js-trainer-0-0.js", "js-trainer-0-1.js", "js-trainer-0-2.js")


@pytest.mark.parametrize("completions", [1, 2, 4])
def test_indexed_job(completions: int) -> None:
    pods = [indexed_pod("train", completions, i) for i in range(completions)]
    hosts = _agree(pods, kubernetes.INDEXED_JOB)
    assert hosts == tuple(f"train-{i}.train" for i in range(completions))
    assert placement(*pods[0]).job_name == "train"


def test_host_domain_names_the_headless_service() -> None:
    pods = [indexed_pod("train", 2, i, SMTK_HOST_DOMAIN="headless-svc") for i in range(2)]
    assert _agree(pods, kubernetes.INDEXED_JOB) == ("train-0.headless-svc", "train-1.headless-svc")
    env, host = jobset_pod("js", "w", 1, 2, 0, 1)
    assert placement({**env, "SMTK_HOST_DOMAIN": "net.team-a"}, host).current_host == "js-w-0-1.net.team-a"


def test_a_fully_qualified_hostname_is_read_by_its_first_label() -> None:
    env, host = indexed_pod("train", 2, 1)
    fqdn = f"{host}.train.default.svc.cluster.local"
    assert placement(env, fqdn) == placement(env, host)


def test_names_longer_than_a_dns_label_are_refused() -> None:
    # The operator's Service <job>-master-0 must be a DNS label (63 characters at most).
    job = "a-very-long-pytorchjob-name-that-someone-wrote-out-in-full-xyz"
    env, host = pytorchjob_pod(job, "worker", 0, workers=1)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        placement(env, host)
    env, host = jobset_pod("x" * 64, "w", 1, 1, 0, 0)
    with pytest.raises(ConfigError, match="JOBSET_NAME"):
        placement(env, host)


# -- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (trainer_pod("t", 2, 1), kubernetes.TRAINER),
        (pytorchjob_pod("p", "worker", 0, workers=1, version="1.6"), kubernetes.PYTORCHJOB),
        (pytorchjob_pod("p", "worker", 0, workers=1), kubernetes.PYTORCHJOB),
        (pytorchjob_pod("p", "worker", 1, workers=2, master=False, elastic=(2, 2)), kubernetes.PYTORCHJOB),
        (jobset_pod("j", "w", 1, 2, 0, 1), kubernetes.JOBSET),
        (indexed_pod("i", 2, 1), kubernetes.INDEXED_JOB),
    ],
)
def test_each_operator_is_detected(pod: Pod, expected: str) -> None:
    env, _ = pod
    assert kind(env) == expected and detected(env)
    # Outside a cluster the same variables are somebody else's.
    outside = {k: v for k, v in env.items() if k != "KUBERNETES_SERVICE_HOST"}
    assert not detected(outside) and kind(outside) == expected


@pytest.mark.parametrize(
    "env",
    [
        {},
        KUBELET,  # a pod of a Deployment, a bare Pod, a non-indexed Job
        {**KUBELET, "MASTER_ADDR": "db", "RANK": "0"},  # not all of a PyTorchJob's variables
        {**KUBELET, "JOBSET_NAME": "js"},  # no completion index: not a JobSet's Indexed Job pod
        {**KUBELET, "JOB_COMPLETION_INDEX": "  "},
        {"SLURM_JOB_ID": "7", "SLURM_NODELIST": "n[1-2]", "SLURM_NODEID": "0"},
    ],
)
def test_other_processes_are_not_detected(env: Mapping[str, str]) -> None:
    assert not detected(env)
    if kind(env) is None:
        with pytest.raises(ConfigError, match="none of them set"):
            placement(env, "pod")


# -- errors: one thing wrong at a time ---------------------------------------------------------

T_ENV, T_HOST = trainer_pod("llama", 2, 1)
P_ENV, P_HOST = pytorchjob_pod("mnist", "worker", 1, workers=2, nproc="2")
P6_ENV, P6_HOST = pytorchjob_pod("mnist", "worker", 0, workers=2, version="1.6")
E_ENV, E_HOST = pytorchjob_pod("bert", "worker", 1, workers=2, master=False, elastic=(-1, -1))
J_ENV, J_HOST = jobset_pod("js", "w", 2, 2, 1, 0)
I_ENV, I_HOST = indexed_pod("train", 2, 1)


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


ERRORS: list[tuple[str, dict[str, str], str, str, str]] = [
    # (case, environment, hostname, variable named, text in the message)
    ("trainer: count not a number", {**T_ENV, "PET_NNODES": "two"}, T_HOST, "PET_NNODES", "'two'"),
    ("trainer: count zero", {**T_ENV, "PET_NNODES": "0"}, T_HOST, "PET_NNODES", "from 1"),
    ("trainer: rank out of range", {**T_ENV, "PET_NODE_RANK": "2"}, T_HOST, "PET_NODE_RANK",
     "below PET_NNODES (2)"),
    ("trainer: rank missing", _without(T_ENV, "PET_NODE_RANK"), T_HOST, "PET_NODE_RANK", "<unset>"),
    ("trainer: rank negative", {**T_ENV, "PET_NODE_RANK": "-1"}, T_HOST, "PET_NODE_RANK", "'-1'"),
    ("trainer: index contradicts rank", {**T_ENV, "JOB_COMPLETION_INDEX": "0"}, T_HOST,
     "JOB_COMPLETION_INDEX", "1, as PET_NODE_RANK"),
    ("trainer: master not node-0-0", {**T_ENV, "PET_MASTER_ADDR": "llama-master"}, T_HOST, "PET_MASTER_ADDR",
     "<trainjob>-node-0-0"),
    ("trainer: master without domain", {**T_ENV, "PET_MASTER_ADDR": "llama-node-0-0"}, T_HOST,
     "PET_MASTER_ADDR", "'llama-node-0-0'"),
    ("trainer: hostname of another node", T_ENV, "llama-node-0-0", "hostname", "'llama-node-0-1' (node 1"),
    ("trainer: count contradicts SMTK_HOST_COUNT", {**T_ENV, "SMTK_HOST_COUNT": "3"}, T_HOST,
     "SMTK_HOST_COUNT", "2, as PET_NNODES says"),
    ("pytorchjob: master not -master-0", {**P_ENV, "MASTER_ADDR": "mnist-0"}, P_HOST, "MASTER_ADDR",
     "<job>-master-0"),
    ("pytorchjob: rank out of range", {**P_ENV, "RANK": "3", "PET_NODE_RANK": "3"}, P_HOST, "RANK",
     "below PET_NNODES (3)"),
    ("pytorchjob: ranks contradict", {**P_ENV, "PET_NODE_RANK": "1"}, P_HOST, "PET_NODE_RANK", "2, as RANK"),
    ("pytorchjob: world size contradicts", {**P_ENV, "WORLD_SIZE": "5"}, P_HOST, "WORLD_SIZE",
     "PET_NNODES (3) times PET_NPROC_PER_NODE (2)"),
    ("pytorchjob: elastic range", {**P_ENV, "PET_NNODES": "1:3"}, P_HOST, "PET_NNODES", "fixed node count"),
    ("pytorchjob: hostname of another pod", P_ENV, "mnist-worker-0", "hostname",
     "'mnist-worker-1' (worker 1 (RANK 2)"),
    ("pytorchjob: hostname of another job", P_ENV, "other-worker-1", "hostname", "'mnist-worker-1'"),
    ("pytorchjob 1.6: rank out of range", {**P6_ENV, "RANK": "3"}, P6_HOST, "RANK", "below WORLD_SIZE (3)"),
    ("pytorchjob 1.6: world size huge", {**P6_ENV, "WORLD_SIZE": "999999"}, P6_HOST, "WORLD_SIZE",
     "at most 10000"),
    ("pytorchjob 1.6: count contradicts SMTK_HOST_COUNT", {**P6_ENV, "SMTK_HOST_COUNT": "2"}, P6_HOST,
     "SMTK_HOST_COUNT", "3, as WORLD_SIZE says"),
    ("elastic: hostname without index", E_ENV, "bert-worker-x", "hostname", "<job>-worker-<index>"),
    ("elastic: hostname of a master", E_ENV, "bert-master-0", "hostname", "<job>-worker-<index>"),
    ("elastic: index out of range", E_ENV, "bert-worker-2", "hostname", "below PET_NNODES (2)"),
    ("elastic: leading zero", E_ENV, "bert-worker-01", "hostname", "<job>-worker-<index>"),
    ("elastic: rendezvous of another job", {**E_ENV, "PET_RDZV_ENDPOINT": "gpt-worker-0:23456"}, E_HOST,
     "PET_RDZV_ENDPOINT", "'bert-worker-0:<port>'"),
    ("elastic: range", {**E_ENV, "PET_NNODES": "2:4"}, E_HOST, "PET_NNODES", "minReplicas = maxReplicas"),
    ("jobset: no host count", _without(J_ENV, "SMTK_HOST_COUNT"), J_HOST, "SMTK_HOST_COUNT",
     "set SMTK_HOST_COUNT in the manifest"),
    ("jobset: count not a multiple", {**J_ENV, "SMTK_HOST_COUNT": "3"}, J_HOST, "SMTK_HOST_COUNT",
     "multiple of REPLICATED_JOB_REPLICAS (2)"),
    ("jobset: index out of range", {**J_ENV, "JOB_COMPLETION_INDEX": "2"}, J_HOST, "JOB_COMPLETION_INDEX",
     "below SMTK_HOST_COUNT / REPLICATED_JOB_REPLICAS (2)"),
    ("jobset: hostname of another index", J_ENV, "js-w-1-1", "hostname", "'js-<replicatedJob>-<jobIndex>-0'"),
    ("jobset: hostname of another jobset", J_ENV, "other-w-1-0", "hostname", "enableDNSHostnames"),
    ("jobset: pod name, not hostname", J_ENV, "js-w-1-0-x7k2p", "hostname", "JOB_COMPLETION_INDEX=0"),
    ("jobset: replicated job contradicts", {**J_ENV, "REPLICATED_JOB_NAME": "driver"}, J_HOST,
     "REPLICATED_JOB_NAME", "'w', as in the hostname"),
    ("jobset: job index contradicts", {**J_ENV, "JOB_INDEX": "0"}, J_HOST, "JOB_INDEX", "1, as the hostname"),
    ("jobset: replicas not passed in", _without(J_ENV, "REPLICATED_JOB_REPLICAS"), J_HOST,
     "REPLICATED_JOB_REPLICAS", "<unset: 1>"),
    ("jobset: bad name", {**J_ENV, "JOBSET_NAME": "JS_1"}, J_HOST, "JOBSET_NAME", "DNS label"),
    ("jobset: bad domain", {**J_ENV, "SMTK_HOST_DOMAIN": "bad_domain"}, J_HOST, "SMTK_HOST_DOMAIN",
     "headless Service"),
    ("indexed: no host count", _without(I_ENV, "SMTK_HOST_COUNT"), I_HOST, "SMTK_HOST_COUNT", "completions"),
    ("indexed: count not a number", {**I_ENV, "SMTK_HOST_COUNT": "two"}, I_HOST, "SMTK_HOST_COUNT", "'two'"),
    ("indexed: count too large", {**I_ENV, "SMTK_HOST_COUNT": "10001"}, I_HOST, "SMTK_HOST_COUNT",
     "1 to 10000"),
    ("indexed: index out of range", {**I_ENV, "JOB_COMPLETION_INDEX": "2"}, I_HOST, "JOB_COMPLETION_INDEX",
     "below SMTK_HOST_COUNT (2)"),
    ("indexed: index not a number", {**I_ENV, "JOB_COMPLETION_INDEX": "one"}, I_HOST, "JOB_COMPLETION_INDEX",
     "'one'"),
    ("indexed: hostname of another index", I_ENV, "train-0", "hostname", "'<job>-1'"),
    ("indexed: hostname is a pod name", I_ENV, "train-1-abcde", "hostname", "'<job>-1'"),
    ("indexed: hostname is only the index", I_ENV, "-1", "hostname", "'<job>-1'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "hostname", "variable", "text"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS]
)
def test_errors_name_the_variable_expected_and_found(
    env: dict[str, str], hostname: str, variable: str, text: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        placement(env, hostname)
    assert caught.value.source == variable
    assert text in str(caught.value)
    assert caught.value.exit_status == 2


def test_every_error_case_is_otherwise_valid() -> None:
    # The table's base pods are all well formed: each error comes from the one change.
    for env, host in [(T_ENV, T_HOST), (P_ENV, P_HOST), (P6_ENV, P6_HOST), (E_ENV, E_HOST), (J_ENV, J_HOST)]:
        assert isinstance(placement(env, host), Placement)
    assert isinstance(placement(I_ENV, I_HOST), Placement)


# -- any job shape ----------------------------------------------------------------------------

_NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(name=_NAMES, replicas=st.integers(1, 4), completions=st.integers(1, 6))
def test_any_jobset_shape(name: str, replicas: int, completions: int) -> None:
    pods = [
        jobset_pod(name, "r", replicas, completions, j, p)
        for j in range(replicas)
        for p in range(completions)
    ]
    _agree(pods, kubernetes.JOBSET)


@settings(max_examples=60, deadline=None)
@given(name=_NAMES, workers=st.integers(0, 8), version=st.sampled_from(["1.6", "1.9"]))
def test_any_pytorchjob_shape(name: str, workers: int, version: str) -> None:
    pods = [pytorchjob_pod(name, "master", 0, workers=workers, version=version)]
    pods += [pytorchjob_pod(name, "worker", i, workers=workers, version=version) for i in range(workers)]
    _agree(pods, kubernetes.PYTORCHJOB)


@settings(max_examples=60, deadline=None)
@given(name=_NAMES, count=st.integers(1, 12))
def test_any_indexed_job_and_trainjob_shape(name: str, count: int) -> None:
    _agree([indexed_pod(name, count, i) for i in range(count)], kubernetes.INDEXED_JOB)
    _agree([trainer_pod(name, count, i) for i in range(count)], kubernetes.TRAINER)


_BASES: list[Pod] = [(T_ENV, T_HOST), (P_ENV, P_HOST), (P6_ENV, P6_HOST), (E_ENV, E_HOST), (J_ENV, J_HOST)]
_BASES.append((I_ENV, I_HOST))


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(_BASES),
    data=st.data(),
    value=st.text(max_size=80) | st.integers(-3, 12).map(str),
    hostname=st.none() | st.text(max_size=80),
)
def test_any_changed_value_gives_a_placement_or_a_config_error(
    base: Pod, data: st.DataObject, value: str, hostname: str | None
) -> None:
    env, host = base
    name = data.draw(st.sampled_from(sorted(env)), label="variable")
    changed = {**env, name: value}
    try:
        place = placement(changed, host if hostname is None else hostname)
    except ConfigError as exc:
        assert exc.exit_status == 2 and str(exc)
    else:
        assert place.current_host in place.hosts and len(set(place.hosts)) == len(place.hosts)


# -- the manifests in docs/outside-sagemaker.md ---------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "outside-sagemaker.md"


def _manifests() -> dict[str, dict[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Kubernetes") :]
    found: dict[str, dict[str, Any]] = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        for document in yaml.safe_load_all(block):
            found[document["kind"]] = document
    return found


def _container_env(pod_spec: Mapping[str, Any], annotations: Mapping[str, str]) -> dict[str, str]:
    """The manifest's env of the first container, downward-API references resolved."""
    env: dict[str, str] = {}
    for item in pod_spec["containers"][0].get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path)
            assert key is not None, path
            env[item["name"]] = annotations[key.group(1)]
    return env


def test_documented_jobset_manifest() -> None:
    jobset = _manifests()["JobSet"]
    name = jobset["metadata"]["name"]
    replicated = jobset["spec"]["replicatedJobs"][0]
    replicas, job = replicated["replicas"], replicated["template"]["spec"]
    pods: list[Pod] = []
    for j in range(replicas):
        for p in range(job["completions"]):
            annotations = {  # jobset_controller.go labelAndAnnotateObject, on every pod
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": replicated["name"],
                "jobset.sigs.k8s.io/replicatedjob-replicas": str(replicas),
                "jobset.sigs.k8s.io/job-index": str(j),
            }
            env = {
                **KUBELET,
                **_container_env(job["template"]["spec"], annotations),
                "JOB_COMPLETION_INDEX": str(p),
            }
            pods.append((env, f"{name}-{replicated['name']}-{j}-{p}"))
    hosts = _agree(pods, kubernetes.JOBSET)
    assert hosts == ("mnist-workers-0-0.mnist", "mnist-workers-0-1.mnist")


def test_documented_indexed_job_manifest() -> None:
    manifests = _manifests()
    job, service = manifests["Job"], manifests["Service"]
    name, spec = job["metadata"]["name"], job["spec"]
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": name}
    pods = [
        (
            {**KUBELET, **_container_env(spec["template"]["spec"], {}), "JOB_COMPLETION_INDEX": str(i)},
            f"{name}-{i}",
        )
        for i in range(spec["completions"])
    ]
    hosts = _agree(pods, kubernetes.INDEXED_JOB)
    assert {host.partition(".")[2] for host in hosts} == {service["metadata"]["name"]}


def test_documented_pytorchjob_and_trainjob_manifests() -> None:
    manifests = _manifests()
    job = manifests["PyTorchJob"]
    name, replicas = job["metadata"]["name"], job["spec"]["pytorchReplicaSpecs"]
    workers = replicas["Worker"]["replicas"]
    pods = []
    for rtype, count in (("master", 1), ("worker", workers)):
        spec = replicas[rtype.capitalize()]["template"]["spec"]
        port = spec["containers"][0]["ports"][0]["containerPort"]
        for i in range(count):
            env, host = pytorchjob_pod(name, rtype, i, workers=workers, port=port)
            pods.append(({**env, **_container_env(spec, {})}, host))
    assert _agree(pods, kubernetes.PYTORCHJOB) == ("mnist-master-0", "mnist-worker-0")
    trainjob = manifests["TrainJob"]
    name, nodes = trainjob["metadata"]["name"], trainjob["spec"]["trainer"]["numNodes"]
    pods = [trainer_pod(name, nodes, rank) for rank in range(nodes)]
    assert _agree(pods, kubernetes.TRAINER) == ("mnist-node-0-0.mnist", "mnist-node-0-1.mnist")
