"""Where this pod sits in a job that a Kubernetes operator started.

``train`` in a pod finds its place from what the operator put into the pod: environment
variables, the pod's hostname and the DNS names that the operator's headless Service
gives every pod. Four operators are understood, each from its own source:

Kubeflow Trainer (v2, ``TrainJob`` on the ``torch-distributed`` runtime), ``kubeflow-trainer``
    The torch plugin (kubeflow/trainer v2.0-v2.3,
    ``pkg/runtime/framework/plugins/torch/torch.go``, names in ``pkg/constants/constants.go``)
    sets ``PET_NNODES`` (the node count), ``PET_NPROC_PER_NODE`` (``auto`` or a number),
    ``PET_NODE_RANK`` (from the pod's ``batch.kubernetes.io/job-completion-index``
    annotation), ``PET_MASTER_ADDR`` = ``<trainjob>-node-0-0.<trainjob>`` and
    ``PET_MASTER_PORT`` = ``29500``. The nodes are the pods of a JobSet named after the
    TrainJob (``pkg/runtime/framework/plugins/jobset/jobset.go``, ``syncPodNetwork``):
    ``<trainjob>-node-0-<i>.<trainjob>``.

Kubeflow Training Operator v1 (``PyTorchJob``), ``pytorchjob``
    ``pkg/controller.v1/pytorch/envvar.go``, ``master.go`` and ``elastic.go``
    (kubeflow/training-operator v1.5-v1.9). With a ``Master`` replica every pod gets
    ``MASTER_ADDR`` = ``<job>-master-0``, ``MASTER_PORT``, ``RANK`` (0 for the master,
    worker ``i`` is ``i + 1``) and ``WORLD_SIZE``: the pod count up to v1.6, the pod count
    times an integer ``nprocPerNode`` from v1.7, which also sets ``PET_NNODES`` (the pod
    count), ``PET_NODE_RANK`` (= ``RANK``), ``PET_MASTER_ADDR``/``PET_MASTER_PORT`` and,
    when given, ``PET_NPROC_PER_NODE``. Elastic jobs (``elasticPolicy``, usually workers
    only) get ``PET_NNODES`` as ``<n>`` or ``<min>:<max>``, ``PET_RDZV_ENDPOINT`` =
    ``<job>-worker-0:<port>`` and the other ``PET_RDZV_*`` values; their pods learn their
    index only from their name. Pods and their headless Services are named
    ``<job>-<replica type>-<index>`` (``pkg/core/utils.go``, ``GenGeneralName``;
    ``pkg/controller.v1/common/service.go``), and the pod's hostname is its name.

JobSet (``jobset.x-k8s.io/v1alpha2``), ``jobset``
    The controller (kubernetes-sigs/jobset v0.12, ``pkg/controllers/jobset_controller.go``)
    makes Indexed Jobs ``<jobset>-<replicatedJob>-<jobIndex>`` whose pods' subdomain is
    ``spec.network.subdomain``, by default the JobSet's name (``GetSubdomain``), with a
    headless Service of that name. It sets no variable of its own: it annotates every pod
    (``api/jobset/v1alpha2/jobset_types.go``: ``jobset.sigs.k8s.io/jobset-name``,
    ``replicatedjob-name``, ``replicatedjob-replicas``, ``job-index``), and a manifest
    passes them in through the downward API, as JobSet's own examples do for
    ``JOBSET_NAME``. smtk reads ``JOBSET_NAME`` (required), ``REPLICATED_JOB_REPLICAS``
    (required when the replicated job has more than one replica), and checks
    ``REPLICATED_JOB_NAME`` and ``JOB_INDEX`` against the hostname when given.

Indexed Job (``batch/v1`` ``completionMode: Indexed``), ``indexed-job``
    The Job controller (kubernetes ``pkg/controller/job/job_controller.go`` and
    ``indexed_job_utils.go``) sets ``JOB_COMPLETION_INDEX`` in every container and the
    pod's hostname to ``<job>-<index>``; with ``spec.template.spec.subdomain`` naming a
    headless Service the pods resolve as ``<job>-<index>.<subdomain>``
    (https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode).

Neither a JobSet nor an Indexed Job tells a pod how many pods there are (a pod sees
neither ``parallelism`` nor ``completions``), so those two need ``SMTK_HOST_COUNT``: every
pod of the job (for a JobSet: of this replicated job, replicas times completions).
``SMTK_HOST_DOMAIN`` names the headless Service when it is not the default (the JobSet's
name; for an Indexed Job the Job's name). Where the operator does give the count,
``SMTK_HOST_COUNT`` may be set too and must agree.

The hosts are the names every pod resolves, in node-rank order: the Service names of a
PyTorchJob (the pods' hostnames) and ``<hostname>.<subdomain>`` for the others. This pod's
hostname (short or fully qualified) must be the one its index predicts; anything
missing, malformed or contradicting is a :class:`~smtk.errors.ConfigError` naming the
variable (or the hostname), what was expected and what was found.

GPUs are left to smtk's usual detection (``Placement.gpus`` is ``None``): the device
plugin puts exactly the pod's GPUs into the container, and ``PET_NPROC_PER_NODE`` counts
processes (a CPU count on CPU-only Trainer nodes), not GPUs.

Both functions are pure: they read only the mapping and the hostname they are given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from smtk import settings
from smtk.errors import ConfigError
from smtk.scheduler.placement import Placement

TRAINER: Final = "kubeflow-trainer"
PYTORCHJOB: Final = "pytorchjob"
JOBSET: Final = "jobset"
INDEXED_JOB: Final = "indexed-job"

#: Set by the kubelet in every container (the API server's Service), whatever the operator.
IN_CLUSTER = "KUBERNETES_SERVICE_HOST"
#: Set by the Job controller in every container of an Indexed Job's pod (JobSet's and Trainer's too).
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
#: Most digits an index or count may have (keeps int() linear and values sane).
_MAX_DIGITS = 9
#: One DNS label, and a dotted DNS name (RFC 1123, as Kubernetes validates names).
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")


def kind(environ: Mapping[str, str]) -> str | None:
    """Which operator's variables ``environ`` carries (``None``: none of them).

    The Trainer's pods are Indexed-Job pods with ``PET_MASTER_ADDR``; PyTorchJob pods are
    not Job pods at all (no ``JOB_COMPLETION_INDEX``); a JobSet pod is an Indexed-Job pod
    whose manifest passed in ``JOBSET_NAME``.
    """
    indexed = _given(environ, COMPLETION_INDEX)
    if indexed and _given(environ, "PET_MASTER_ADDR") and _given(environ, "PET_NNODES"):
        return TRAINER
    if not indexed and (
        _given(environ, "PET_NNODES")
        or all(_given(environ, n) for n in ("MASTER_ADDR", "RANK", "WORLD_SIZE"))
    ):
        return PYTORCHJOB
    if indexed and _given(environ, "JOBSET_NAME"):
        return JOBSET
    if indexed:
        return INDEXED_JOB
    return None


def detected(environ: Mapping[str, str]) -> bool:
    """Whether this process runs in a pod that one of the four operators started."""
    return _given(environ, IN_CLUSTER) and kind(environ) is not None


def placement(environ: Mapping[str, str], hostname: str) -> Placement:
    """This pod's place in its job: every host in node-rank order, this host, the job's name.

    ``hostname`` is this pod's hostname (``socket.gethostname()``; a fully qualified name
    is compared by its first label).
    """
    found = kind(environ)
    if found is None:
        raise ConfigError(
            COMPLETION_INDEX,
            None,
            "the variables of a Kubeflow Trainer, PyTorchJob, JobSet or Indexed Job pod "
            "(PET_NNODES, MASTER_ADDR/RANK/WORLD_SIZE, JOBSET_NAME or JOB_COMPLETION_INDEX)",
            "<none of them set>",
            hint="run train in a pod of one of these operators, or choose another scheduler",
        )
    return _READERS[found](environ, _short(hostname))


# -- one reader per operator ---------------------------------------------------------------


def _trainer(environ: Mapping[str, str], hostname: str) -> Placement:
    nodes = _count(environ, "PET_NNODES")
    rank = _index(environ, "PET_NODE_RANK", nodes, "PET_NNODES")
    _agree(environ, COMPLETION_INDEX, rank, "PET_NODE_RANK")
    master = environ["PET_MASTER_ADDR"].strip()
    short, dot, domain = master.partition(".")
    # <trainjob>-node-0-0.<trainjob>: replicated job "node", job 0, pod 0, in the JobSet's subdomain.
    prefix = short.removesuffix("-0-0")
    if not dot or prefix == short or not prefix or not _DOMAIN.fullmatch(domain) or not _name(short):
        raise ConfigError(
            "PET_MASTER_ADDR", None, "'<trainjob>-node-0-0.<trainjob>' (the first node's DNS name)", master
        )
    hosts = tuple(f"{prefix}-0-{i}.{domain}" for i in range(nodes))
    _check_hostname(hostname, f"{prefix}-0-{rank}", f"node {rank} of the TrainJob (PET_NODE_RANK)")
    _check_host_count(environ, nodes, "PET_NNODES")
    return Placement(TRAINER, hosts, hosts[rank], job_name=prefix.removesuffix("-node"))


def _pytorchjob(environ: Mapping[str, str], hostname: str) -> Placement:
    if _given(environ, "MASTER_ADDR"):
        return _pytorchjob_with_master(environ, hostname)
    return _pytorchjob_elastic(environ, hostname)


def _pytorchjob_with_master(environ: Mapping[str, str], hostname: str) -> Placement:
    master = environ["MASTER_ADDR"].strip()
    job = master.removesuffix("-master-0")
    if job == master or not job or not _name(master):
        raise ConfigError("MASTER_ADDR", None, "'<job>-master-0' (the PyTorchJob's master pod)", master)
    world = _count(environ, "WORLD_SIZE", maximum=None)
    if _given(environ, "PET_NNODES"):
        # v1.7 and later: WORLD_SIZE counts processes (pods times an integer nprocPerNode).
        nodes = _fixed_nodes(environ)
        procs = _procs(environ)
        if world not in (nodes, nodes * procs):
            raise ConfigError(
                "WORLD_SIZE",
                None,
                f"PET_NNODES ({nodes}) times PET_NPROC_PER_NODE ({procs}), as the operator sets it",
                world,
            )
    else:
        # v1.6 and earlier: WORLD_SIZE is the pod count.
        nodes = world
        if nodes > settings.MAX_HOST_COUNT:
            raise ConfigError("WORLD_SIZE", None, f"at most {settings.MAX_HOST_COUNT} pods", world)
    count_name = "PET_NNODES" if _given(environ, "PET_NNODES") else "WORLD_SIZE"
    rank = _index(environ, "RANK", nodes, count_name)
    if _given(environ, "PET_NODE_RANK"):
        _agree(environ, "PET_NODE_RANK", rank, "RANK")
    hosts = (master, *(f"{job}-worker-{i}" for i in range(nodes - 1)))
    what = "the master (RANK 0)" if rank == 0 else f"worker {rank - 1} (RANK {rank})"
    _check_hostname(hostname, hosts[rank], f"{what} of PyTorchJob {job!r}")
    _check_host_count(environ, nodes, count_name)
    return Placement(PYTORCHJOB, hosts, hosts[rank], job_name=job)


def _pytorchjob_elastic(environ: Mapping[str, str], hostname: str) -> Placement:
    """Workers only: the pod's index is in its name (``<job>-worker-<i>``) and nowhere else."""
    nodes = _fixed_nodes(environ)
    job, _, index = hostname.rpartition("-worker-")
    if not job or not _digits(index) or (len(index) > 1 and index.startswith("0")):
        raise ConfigError(
            "hostname",
            None,
            "'<job>-worker-<index>' (a PyTorchJob worker pod without a Master replica)",
            hostname,
            hint="a PyTorchJob pod's hostname is its name",
        )
    rank = int(index)
    if rank >= nodes:
        raise ConfigError("hostname", None, f"a worker index below PET_NNODES ({nodes})", hostname)
    endpoint = environ.get("PET_RDZV_ENDPOINT", "").strip()
    rdzv_host = endpoint.rpartition(":")[0] or endpoint
    # The default rendezvous host is worker 0; a custom one (rdzvHost) says nothing about names.
    if rdzv_host.endswith("-worker-0") and rdzv_host != f"{job}-worker-0":
        raise ConfigError(
            "PET_RDZV_ENDPOINT",
            None,
            f"'{job}-worker-0:<port>' (this pod's job, from its hostname)",
            endpoint,
        )
    hosts = tuple(f"{job}-worker-{i}" for i in range(nodes))
    _check_host_count(environ, nodes, "PET_NNODES")
    return Placement(PYTORCHJOB, hosts, hosts[rank], job_name=job)


def _jobset(environ: Mapping[str, str], hostname: str) -> Placement:
    jobset = environ["JOBSET_NAME"].strip()
    if not _name(jobset):
        raise ConfigError("JOBSET_NAME", None, "a JobSet's name (a DNS label)", jobset)
    replicas = _count(environ, "REPLICATED_JOB_REPLICAS") if _given(environ, "REPLICATED_JOB_REPLICAS") else 1
    total = _required_host_count(environ, "every pod of this replicated job (replicas times completions)")
    if total % replicas:
        raise ConfigError(
            "SMTK_HOST_COUNT",
            None,
            f"a multiple of REPLICATED_JOB_REPLICAS ({replicas}): replicas times completions",
            total,
        )
    per_job = total // replicas
    pod = _index(environ, COMPLETION_INDEX, per_job, "SMTK_HOST_COUNT / REPLICATED_JOB_REPLICAS")
    # <jobset>-<replicatedJob>-<jobIndex>-<podIndex>, set by the Job controller from the Job's name.
    rest = hostname.removeprefix(f"{jobset}-")
    parts = rest.rsplit("-", 2)
    if rest == hostname or len(parts) != 3 or not parts[0] or not _digits(parts[1]) or parts[2] != str(pod):
        raise ConfigError(
            "hostname",
            None,
            f"'{jobset}-<replicatedJob>-<jobIndex>-{pod}' (a JobSet pod with JOBSET_NAME={jobset} "
            f"and JOB_COMPLETION_INDEX={pod})",
            hostname,
            hint="JobSet sets pod hostnames when spec.network.enableDNSHostnames is true (the default)",
        )
    replicated_job, job_index = parts[0], int(parts[1])
    if _given(environ, "REPLICATED_JOB_NAME") and environ["REPLICATED_JOB_NAME"].strip() != replicated_job:
        raise ConfigError(
            "REPLICATED_JOB_NAME", None, f"{replicated_job!r}, as in the hostname {hostname!r}",
            environ["REPLICATED_JOB_NAME"],
        )  # fmt: skip
    if _given(environ, "JOB_INDEX"):
        _agree(environ, "JOB_INDEX", job_index, f"the hostname {hostname!r}")
    if job_index >= replicas:
        raise ConfigError(
            "REPLICATED_JOB_REPLICAS",
            None,
            f"more than {job_index} replicas (the hostname {hostname!r} is job {job_index})",
            environ.get("REPLICATED_JOB_REPLICAS", "<unset: 1>"),
        )
    domain = _domain(environ, jobset)
    stem = f"{jobset}-{replicated_job}"
    hosts = tuple(f"{stem}-{j}-{p}.{domain}" for j in range(replicas) for p in range(per_job))
    return Placement(JOBSET, hosts, hosts[job_index * per_job + pod], job_name=jobset)


def _indexed_job(environ: Mapping[str, str], hostname: str) -> Placement:
    total = _required_host_count(environ, "the Indexed Job's completions")
    index = _index(environ, COMPLETION_INDEX, total, "SMTK_HOST_COUNT")
    job = hostname.removesuffix(f"-{index}")
    if job == hostname or not job:
        raise ConfigError(
            "hostname",
            None,
            f"'<job>-{index}' (an Indexed Job pod's hostname: the Job's name and JOB_COMPLETION_INDEX)",
            hostname,
        )
    domain = _domain(environ, job)
    hosts = tuple(f"{job}-{i}.{domain}" for i in range(total))
    return Placement(INDEXED_JOB, hosts, hosts[index], job_name=job)


_READERS: Final[dict[str, Callable[[Mapping[str, str], str], Placement]]] = {
    TRAINER: _trainer,
    PYTORCHJOB: _pytorchjob,
    JOBSET: _jobset,
    INDEXED_JOB: _indexed_job,
}


# -- values ----------------------------------------------------------------------------------


def _given(environ: Mapping[str, str], name: str) -> bool:
    return bool(environ.get(name, "").strip())


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS


def _name(text: str) -> bool:
    return _LABEL.fullmatch(text) is not None


def _short(hostname: str) -> str:
    return hostname.strip().partition(".")[0].lower()


def _count(environ: Mapping[str, str], name: str, *, maximum: int | None = settings.MAX_HOST_COUNT) -> int:
    raw = environ.get(name, "")
    text = raw.strip()
    if not _digits(text) or int(text) < 1 or (maximum is not None and int(text) > maximum):
        upper = f" to {maximum}" if maximum is not None else " or more"
        raise ConfigError(name, None, f"an integer from 1{upper}", raw if raw else "<unset>")
    return int(text)


def _index(environ: Mapping[str, str], name: str, count: int, count_name: str) -> int:
    raw = environ.get(name, "")
    text = raw.strip()
    if not _digits(text):
        raise ConfigError(name, None, "an index: an integer >= 0", raw if raw else "<unset>")
    value = int(text)
    if value >= count:
        raise ConfigError(name, None, f"an index below {count_name} ({count})", raw)
    return value


def _agree(environ: Mapping[str, str], name: str, value: int, source: str) -> None:
    raw = environ.get(name, "")
    if not _digits(raw.strip()) or int(raw.strip()) != value:
        raise ConfigError(name, None, f"{value}, as {source} says", raw if raw else "<unset>")


def _fixed_nodes(environ: Mapping[str, str]) -> int:
    """``PET_NNODES`` as ``<n>`` or ``<n>:<n>``: smtk's host list cannot grow or shrink."""
    raw = environ.get("PET_NNODES", "").strip()
    low, colon, high = raw.partition(":")
    if colon and low.strip() != high.strip():
        raise ConfigError(
            "PET_NNODES",
            None,
            "a fixed node count (<n> or <n>:<n>)",
            raw,
            hint="an elastic PyTorchJob's node range is not supported: set minReplicas = maxReplicas",
        )
    return _count({"PET_NNODES": low}, "PET_NNODES") if colon else _count(environ, "PET_NNODES")


def _procs(environ: Mapping[str, str]) -> int:
    """``PET_NPROC_PER_NODE`` as the operator counts it for ``WORLD_SIZE``: 1 unless a number."""
    text = environ.get("PET_NPROC_PER_NODE", "").strip()
    return int(text) if _digits(text) and int(text) > 0 else 1


def _required_host_count(environ: Mapping[str, str], what: str) -> int:
    count = settings.host_count(environ)
    if count is None:
        raise ConfigError(
            "SMTK_HOST_COUNT",
            None,
            f"the number of hosts: {what}",
            "<unset>",
            hint="a pod is not told how many pods its job has; set SMTK_HOST_COUNT in the manifest",
        )
    return count


def _check_host_count(environ: Mapping[str, str], count: int, source: str) -> None:
    given = settings.host_count(environ)
    if given is not None and given != count:
        raise ConfigError("SMTK_HOST_COUNT", None, f"{count}, as {source} says, or unset", given)


def _domain(environ: Mapping[str, str], default: str) -> str:
    domain = settings.host_domain(environ) or default
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError("SMTK_HOST_DOMAIN", None, "a DNS name: the headless Service's name", domain)
    return domain


def _check_hostname(hostname: str, expected: str, what: str) -> None:
    if hostname != expected:
        raise ConfigError("hostname", None, f"{expected!r} ({what})", hostname)
