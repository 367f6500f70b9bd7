"""``train`` under a cluster scheduler: the job spec and this host's place -> the usual run.

What the platform does before it starts ``train`` in a container, this does on each
host that Slurm or Kubernetes started ``train`` on, then hands over to ``train``'s own
flow (:func:`smtk.train.main`) unchanged::

    SMTK_JOB_SPEC (the spec smtk local reads) ─┐
    Placement (hosts, this host, GPUs, name) ──┴─> this host's tree ─> train ─> artifacts
                                                   config files, channels,     (first host,
                                                   environment                 with an output path)

- **The tree** is ``$SMTK_JOB_DIR/<host>`` when ``SMTK_JOB_DIR`` is set (a shared
  directory holds every host's tree, as with ``smtk local``), else the platform's place:
  ``$SAGEMAKER_BASE_DIR`` or ``/opt/ml``. A marker file (:data:`~smtk.scheduler.detect.MARKER`)
  tells a later job on the same node that the tree is not the platform's: it is laid
  out again (``input``, ``model`` and ``output`` cleared; ``code`` and ``checkpoints`` kept).
- **Channels**: shared-filesystem paths are linked, ``s3://`` prefixes downloaded (this
  host's share when ``ShardedByS3Key``), Pipe channels fed while the job runs, exactly as
  ``smtk local`` does for one of its hosts.
- **The environment** the platform gives the container: the spec's ``Environment``,
  ``SAGEMAKER_BASE_DIR`` (the tree) and ``TRAINING_JOB_NAME``. They are set on this
  process's ``os.environ`` (every process ``train`` starts inherits them), as the platform
  sets them on the container.
- **The stopping condition** (``MaxRuntimeInSeconds``) stops the job as the platform does:
  SIGTERM to ``train`` (a :meth:`~smtk.stop.Stop.request`), then its grace period.
- **Artifacts**: with ``OutputDataConfig.S3OutputPath``, the first host packs its
  ``model`` and ``output/data`` to ``<path>/<job name>/output/{model,output}.tar.gz``
  (:mod:`smtk.local.artifacts`), whatever the outcome. A job whose artifacts cannot be
  stored fails (exit status 1), as on the platform.

A failure before ``train`` starts (no spec, a bad spec, a channel that cannot be placed)
is reported like any other: ``output/failure`` in this host's tree (or where the tree
would be) and exit status 2. It also reaches the other hosts of a torchrun, MPI or
TensorFlow job through the status channel, so they stop instead of waiting for this host:
from the tree's configuration once it is written, else from a configuration of its own
(the placement's hosts, and the spec's launcher flags when it was read).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence

from smtk import failure, hardware, log, report
from smtk import train as train_flow
from smtk.cluster.session import Session, join
from smtk.config import load_json_object
from smtk.environment import Environment
from smtk.errors import ConfigError, SmtkError
from smtk.failure import Failure
from smtk.local.artifacts import ArtifactError, store_artifacts
from smtk.local.layout import lay_out_host
from smtk.local.spec import JobSpec, load_spec, with_overrides
from smtk.paths import BASE_DIR_ENV, Paths
from smtk.pipefeed import PipeFeeder
from smtk.redact import secret_values
from smtk.scheduler import detect
from smtk.scheduler.placement import Placement
from smtk.settings import Settings
from smtk.stop import Stop, Stopped

logger = logging.getLogger("smtk")

#: Pipe channels are fed for as many epochs as the job opens (the platform has no limit).
UNLIMITED_EPOCHS = 1_000_000
#: What a tree the bootstrap lays out again loses (``code`` and ``checkpoints`` stay).
_CLEARED = ("input", "model", "output")


def run_scheduled(argv: Sequence[str], stop: Stop) -> int:
    """Lay out this host's tree for the scheduler that started ``train`` and run the job;
    returns ``train``'s exit status. With no scheduler found, ``train`` reads the tree as on
    SageMaker (and reports what is missing there)."""
    scheduler = detect.where(os.environ)
    if scheduler == detect.SAGEMAKER:
        return train_flow.main(argv, stop)
    started = time.monotonic()
    log.configure()
    environ = dict(os.environ)
    stop.phase = "reading the job spec"
    paths = Paths.from_environ(environ)  # where a failure goes until the tree is known
    host: str | None = None
    placed: Placement | None = None
    spec: JobSpec | None = None
    try:
        placed = detect.placement(scheduler, environ)
        host = placed.current_host
        _drop_launcher_defaults()
        settings = Settings.from_environ(environ)
        if settings.job_dir:
            paths = Paths.at(os.path.join(settings.job_dir, placed.current_host))
        spec = _job(settings, placed)
        logger.info(
            "%s: host %s (%d of %d: %s), job %s, tree %s",
            placed.scheduler,
            placed.current_host,
            placed.index + 1,
            len(placed.hosts),
            ", ".join(placed.hosts),
            spec.job_name,
            paths.root,
        )
        stop.phase = "laying out the job tree"
        _clear(paths.root)
        os.environ.update(_environment(spec, paths.root))
        log.add_secrets(secret_values(spec.hyperparameters, spec.environment))
        stop.check()
        lay_out_host(
            spec,
            paths.root,
            placed.current_host,
            list(placed.hosts),
            os.environ,
            settings=settings.s3,
            stop=stop,
            interface=_interface(placed.current_host),
        )
        stop.check()
    except Stopped as stopped:
        found = failure.from_stop(stopped, host=host, seconds=time.monotonic() - started)
        return _failed(paths, found, stop, placed, spec)
    except SmtkError as exc:
        logger.error("%s", exc)
        found = failure.from_error(exc, host=host, seconds=time.monotonic() - started)
        return _failed(paths, found, stop, placed, spec)
    except Exception as exc:  # our bug: reported with its traceback, never a bare one
        logger.exception("internal error while laying out the job tree")
        return _failed(paths, failure.from_internal_error(exc, host=host), stop, placed, spec)
    _check_gpus(placed)
    feeders = _start_feeders(spec, placed, paths.root)
    timer = _runtime_limit(spec, stop)
    try:
        status = train_flow.main(argv, stop)
    finally:
        if timer is not None:
            timer.cancel()
        _stop_feeders(feeders)
    if spec.output_path and placed.index == 0:
        status = _store(spec, paths, status, stop, placed.current_host)
    return status


def _job(settings: Settings, placed: Placement) -> JobSpec:
    """The spec named by ``SMTK_JOB_SPEC``, named after the scheduler's job unless it names itself."""
    if not settings.job_spec:
        raise ConfigError(
            "SMTK_JOB_SPEC",
            None,
            "the job spec file (the JSON smtk local reads)",
            "<unset>",
            hint=f"{placed.scheduler} started train without a SageMaker tree: "
            "set SMTK_JOB_SPEC=/shared/path/job.json (docs/outside-sagemaker.md)",
        )
    spec = load_spec(settings.job_spec)
    named = "TrainingJobName" in (load_json_object(settings.job_spec, required=True) or {})
    if not named and placed.job_name:
        spec = with_overrides(spec, job_name=placed.job_name)
    if spec.instance_count not in (1, len(placed.hosts)):
        logger.warning(
            "the spec asks for %d instances; %s gave %d host(s), which the job runs on",
            spec.instance_count,
            placed.scheduler,
            len(placed.hosts),
        )
    if spec.image:
        logger.info("AlgorithmSpecification.TrainingImage is not used: train already runs in its image")
    return spec


def _clear(root: str) -> None:
    """Make ``root`` ready for a new tree: an earlier bootstrap's tree loses its job's files
    (``code`` and ``checkpoints`` stay); any other tree with an ``input`` is left alone."""
    if os.path.exists(os.path.join(root, detect.MARKER)):
        for name in _CLEARED:
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
    elif os.path.lexists(os.path.join(root, "input")):
        raise ConfigError(
            "the job tree",
            root,
            "a directory without an input/ that smtk did not lay out",
            "<an input/ directory of unknown origin>",
            hint="point SMTK_JOB_DIR at a directory of its own",
        )
    try:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, detect.MARKER), "w", encoding="utf-8") as handle:
            handle.write("laid out by smtk's scheduler bootstrap; laid out again by the next job\n")
    except OSError as exc:
        raise ConfigError(
            "the job tree",
            root,
            "a directory train can write",
            f"<{exc.strerror}>",
            hint="set SMTK_JOB_DIR (or SAGEMAKER_BASE_DIR) to a writable directory",
        ) from None


def _drop_launcher_defaults() -> None:
    """Remove ``PET_*`` from this process's environment (so from every child's).

    torchrun takes any ``PET_<OPTION>`` as that option's default, and the Kubeflow
    operators set them for a torchrun of their own (``PET_RDZV_BACKEND``, ``PET_STANDALONE``,
    ...). smtk's torchrun gets its options from the placement, already read; left in place,
    they would change its rendezvous (``PET_STANDALONE=""`` even crashes it).
    """
    for key in [key for key in os.environ if key.startswith("PET_")]:
        del os.environ[key]


def _environment(spec: JobSpec, root: str) -> dict[str, str]:
    """What the platform sets in the container: the spec's variables, the tree, the job name."""
    values = dict(os.environ)
    values.update(spec.environment)
    values[BASE_DIR_ENV] = root
    values["TRAINING_JOB_NAME"] = spec.job_name
    if spec.checkpoint_s3:
        # The platform syncs checkpoints itself; off the platform smtk does (as smtk local).
        values.setdefault("SMTK_SYNC_CHECKPOINTS", "1")
    return values


def _interface(host: str) -> str:
    """The network interface holding ``host``'s address (``SM_NETWORK_INTERFACE_NAME``, and
    ``NCCL_SOCKET_IFNAME`` for torchrun and MPI), else the default route's, else ``eth0``."""
    import psutil  # the scheduler path only: psutil lists every interface's addresses

    try:
        address = socket.gethostbyname(host)
    except OSError:
        address = ""
    if address and not address.startswith("127."):
        for name, addresses in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == address for a in addresses):
                return name
    return _default_route_interface() or "eth0"


def _default_route_interface(table: str = "/proc/net/route") -> str | None:
    try:
        with open(table, encoding="ascii") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and fields[1] == "00000000":
            return fields[0]
    return None


def _check_gpus(placed: Placement) -> None:
    """Say so when the scheduler's GPU count and what this host sees differ: torchrun and MPI
    start one process per visible GPU."""
    if placed.gpus is None:
        return
    visible = hardware.gpu_count(os.environ)
    if visible != placed.gpus:
        logger.warning(
            "%s gave this host %d GPU(s) but %d are visible (nvidia-smi, CUDA_VISIBLE_DEVICES): "
            "torchrun and MPI start one process per visible GPU",
            placed.scheduler,
            placed.gpus,
            visible,
        )


def _start_feeders(spec: JobSpec, placed: Placement, root: str) -> list[PipeFeeder]:
    feeders: list[PipeFeeder] = []
    for channel in spec.channels:
        if channel.input_mode != "Pipe":
            continue
        feeder = PipeFeeder(
            channel=channel.name,
            source=channel.source,
            data_dir=os.path.join(root, "input", "data"),
            epochs=UNLIMITED_EPOCHS,
            record_wrapper=channel.record_wrapper,
            distribution=channel.distribution,
            host_index=placed.index,
            host_count=len(placed.hosts),
            environ=os.environ,
        )
        feeder.start()
        feeders.append(feeder)
    return feeders


def _stop_feeders(feeders: list[PipeFeeder]) -> None:
    for feeder in feeders:
        feeder.stop()
        if feeder.error is not None:
            logger.warning("pipe feeder: %s", feeder.error)


def _runtime_limit(spec: JobSpec, stop: Stop) -> threading.Timer | None:
    """``MaxRuntimeInSeconds``: SIGTERM to the job when it is reached, as the platform sends it."""
    if spec.max_runtime is None:
        return None
    limit = spec.max_runtime

    def reached() -> None:
        logger.warning("StoppingCondition.MaxRuntimeInSeconds (%g s) reached: stopping the job", limit)
        stop.request(signal.SIGTERM)

    timer = threading.Timer(limit, reached)
    timer.daemon = True
    timer.start()
    return timer


def _failed(paths: Paths, found: Failure, stop: Stop, placed: Placement | None, spec: JobSpec | None) -> int:
    """Report a failure before ``train`` ran: here, and to the other hosts (so they stop
    instead of waiting for this host until ``SMTK_READY_TIMEOUT``)."""
    outcome: Failure = found
    try:
        if os.path.exists(paths.resource_config_file):
            outcome = _announce(Environment(paths.root), found, stop, whatever_the_launcher=False)
        elif placed is not None and len(placed.hosts) > 1:
            # This host's tree is not configured (no spec, a bad one, a tree that is not
            # smtk's): announce from a configuration of its own, which names the hosts and,
            # when the spec was read, its launcher flags. Without a spec the launcher is not
            # known, so the announcement is made whatever it is (bounded by
            # SMTK_OUTCOME_LINGER when nobody listens).
            with tempfile.TemporaryDirectory(prefix="smtk-announce-") as root:
                _configure(root, placed, spec)
                outcome = _announce(Environment(root), found, stop, whatever_the_launcher=spec is None)
    except Exception as exc:  # the report below must still be written
        logger.warning("could not tell the other hosts about this failure: %s", exc)
    return report.finish(paths, outcome, log.masker())


def _configure(root: str, placed: Placement, spec: JobSpec | None) -> None:
    """The least of a tree that :class:`Environment` and the status channel need."""
    config = os.path.join(root, "input", "config")
    os.makedirs(config)
    documents = {
        "resourceconfig.json": {"current_host": placed.current_host, "hosts": list(placed.hosts)},
        "hyperparameters.json": dict(spec.hyperparameters) if spec is not None else {},
    }
    for name, document in documents.items():
        with open(os.path.join(config, name), "w", encoding="utf-8") as handle:
            json.dump(document, handle)


def _announce(env: Environment, found: Failure, stop: Stop, *, whatever_the_launcher: bool) -> Failure:
    """Settle ``found`` on the job's status channel; the failure to report."""
    masker = log.masker()
    session = join(env, stop, masker)
    if session is None and whatever_the_launcher:
        session = Session(env, stop, masker, list(env.hosts))
    if session is None:
        return found
    settled = session.settle(found)
    session.close()
    return settled if isinstance(settled, Failure) else found


def _store(spec: JobSpec, paths: Paths, status: int, stop: Stop, host: str) -> int:
    """Pack this host's ``model`` and ``output/data`` to the spec's output path."""
    assert spec.output_path is not None
    try:
        stored = store_artifacts(
            [paths.root],
            spec.output_path,
            spec.job_name,
            os.environ,
            Settings.from_environ(os.environ).s3,
            stop=stop,
            staging_dir=paths.root,
        )
    except (ArtifactError, Stopped, SmtkError) as exc:
        logger.error("%s", exc)
        if status != 0:
            return status  # the job's own failure stays the reason
        # The platform fails a job whose model cannot be stored; a stop still ends it as stopped.
        report.clear_stale(paths)
        found = (
            failure.from_stop(exc, host=host)
            if isinstance(exc, Stopped)
            else Failure(
                cause=f"the job's artifacts could not be stored: {exc}",
                category="artifacts",
                exit_status=1,
                host=host,
                retryable=True,
            )
        )
        return report.finish(paths, found, log.masker())
    for artifact in stored:
        logger.info("stored %s (%d files)", artifact.location, artifact.files)
    return status
