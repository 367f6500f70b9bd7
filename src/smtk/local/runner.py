"""Running a :class:`~smtk.local.spec.JobSpec` on this machine and summarising the outcome.

One host runs ``train`` as a child process (through :mod:`smtk.supervisor`, so
SIGINT/SIGTERM reach it and the maximum runtime is enforced with SIGTERM, as the
platform does). Several hosts run through :mod:`smtk.local.hosts`; ``--image`` runs
``IMAGE train`` through :mod:`smtk.local.container`. Pipe channels get a feeder per
host beside the job (:mod:`smtk.pipefeed`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smtk import log, report
from smtk.errors import ConfigError
from smtk.failure import Failure, Outcome, Success, root_cause
from smtk.files import read_text
from smtk.launch.plan import LaunchPlan
from smtk.local.artifacts import Artifact, ArtifactError, store_artifacts
from smtk.local.container import run_in_container
from smtk.local.hosts import host_sink, run_hosts
from smtk.local.joblog import JobLog
from smtk.local.layout import HostTree, lay_out
from smtk.local.metrics import Metrics
from smtk.local.spec import ChannelSpec, JobSpec
from smtk.paths import Paths
from smtk.pipefeed import PipeFeeder
from smtk.progress import human_size
from smtk.settings import Settings
from smtk.stop import Stop
from smtk.supervisor import prefixed, run

if TYPE_CHECKING:
    from smtk.pipefeed import PipeFeeder

logger = logging.getLogger("smtk")

#: Pipe channels are fed for as many epochs as the job opens (the platform has no limit).
UNLIMITED_EPOCHS = 1_000_000
#: How ``smtk local`` starts a host's ``train``: through the console entry point, which
#: installs the stop before anything else (a stop forwarded at once is never lost).
TRAIN_COMMAND = (sys.executable, "-c", "import smtk.cli; smtk.cli.train_console()")
#: Extra seconds ``smtk local`` waits beyond train's own grace period before SIGKILL.
GRACE_MARGIN = 20.0


@dataclass(frozen=True)
class HostRun:
    """How one host's ``train`` ended: its status, and the failure record it wrote."""

    host: str
    root: str
    exit_status: int
    #: The record from the host's ``output/failure.json`` (or one made from its status).
    outcome: Outcome

    @classmethod
    def of(cls, host: str, root: str, exit_status: int) -> HostRun:
        if exit_status == 0:
            return cls(host, root, 0, Success(host=host))
        found = report.read_failure(Paths.at(root))
        if found is None:
            found = Failure(
                cause=f"train exited with status {exit_status} without writing output/failure.json",
                exit_status=exit_status,
                host=host,
            )
        return cls(host, root, exit_status, found)


@dataclass(frozen=True)
class LocalResult:
    """How a ``smtk local`` job ended, for notebooks and tests (see :func:`smtk.local.run`)."""

    job_name: str
    #: Absolute: the hosts' trees (``<job_dir>/algo-1``), logs and metrics are there.
    job_dir: str
    #: The job's exit status: 0, or the root-cause host's (1 when only storing the artifacts failed).
    exit_status: int
    seconds: float
    #: Every host's status and failure record, in host order.
    hosts: tuple[HostRun, ...]
    #: The stored model.tar.gz and output.tar.gz (with an output path).
    artifacts: tuple[Artifact, ...] = ()
    #: Why they could not be stored ("" when they were, or when there is no output path).
    artifact_error: str = ""
    metrics: Metrics | None = None
    #: host -> its log file.
    logs: Mapping[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0

    @property
    def failure(self) -> Failure | None:
        """The job's root cause (the earliest root-cause failure among the hosts), if it failed."""
        return root_failure(list(self.hosts))

    @property
    def model_dir(self) -> str:
        """The first host's ``/opt/ml/model`` on this machine."""
        return os.path.join(self.hosts[0].root, "model")

    @property
    def model_data(self) -> str | None:
        """Where model.tar.gz was stored (``s3://...`` or a path), if it was."""
        return next((a.location for a in self.artifacts if a.name == "model.tar.gz"), None)

    def metric(self, name: str) -> list[float]:
        """Every value of metric ``name``, in the order they were logged."""
        return [s.value for s in self.metrics.samples(name)] if self.metrics is not None else []


def train_environment(spec: JobSpec, tree: HostTree, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment ``train`` runs with for one host."""
    values = dict(environ)
    values.update(spec.environment)
    values["SAGEMAKER_BASE_DIR"] = tree.root
    values["TRAINING_JOB_NAME"] = spec.job_name
    if spec.checkpoint_s3:
        # The platform syncs checkpoints itself; locally smtk does it.
        values.setdefault("SMTK_SYNC_CHECKPOINTS", "1")
    return values


def _start_feeders(
    spec: JobSpec, trees: list[HostTree], environ: Mapping[str, str], epochs: int | None
) -> list[PipeFeeder]:
    pipes = [c for c in spec.channels if c.input_mode == "Pipe"]
    if not pipes:
        return []
    feeders: list[PipeFeeder] = []
    try:
        for tree in trees:
            for channel in pipes:
                feeders.append(_feeder(channel, tree, len(trees), environ, epochs))
    except BaseException:
        _stop_feeders(feeders)
        raise
    logger.info("feeding %d Pipe channel(s) on %d host(s)", len(pipes), len(trees))
    return feeders


def _feeder(
    channel: ChannelSpec, tree: HostTree, host_count: int, environ: Mapping[str, str], epochs: int | None
) -> PipeFeeder:

    feeder = PipeFeeder(
        channel=channel.name,
        source=channel.source,
        data_dir=os.path.join(tree.root, "input", "data"),
        epochs=epochs or UNLIMITED_EPOCHS,
        record_wrapper=channel.record_wrapper,
        distribution=channel.distribution,
        host_index=tree.index,
        host_count=host_count,
        environ=environ,
        host=tree.host if host_count > 1 else "",
    )
    feeder.start()
    return feeder


def _stop_feeders(feeders: list[PipeFeeder]) -> None:
    for feeder in feeders:
        feeder.stop()
        error = feeder.error
        if error is not None:
            logger.warning("pipe feeder: %s", error)


def run_job(
    spec: JobSpec,
    job_dir: str,
    *,
    stop: Stop | None = None,
    environ: Mapping[str, str] | None = None,
    pipe_epochs: int | None = None,
) -> LocalResult:
    """Lay out, run and summarise ``spec``; how it ended (:class:`LocalResult`)."""
    env = dict(os.environ if environ is None else environ)
    settings = Settings.from_environ(env)
    started = time.monotonic()
    trees = lay_out(spec, job_dir, env, container=spec.image is not None, settings=settings.s3, stop=stop)
    logger.info("job %s: %d host(s) under %s", spec.job_name, len(trees), os.path.abspath(job_dir))
    job_log = JobLog(os.path.abspath(job_dir), Metrics(spec.metric_definitions))
    feeders = _start_feeders(spec, trees, env, pipe_epochs)
    try:
        if spec.image is not None:
            outcomes = _run_in_containers(spec, trees, env, stop, job_log)
        elif len(trees) == 1:
            outcomes = [_run_one(spec, trees[0], env, stop, settings, job_log)]
        else:
            outcomes = _run_hosts(spec, trees, env, stop, settings, job_log)
    finally:
        _stop_feeders(feeders)
        job_log.close()
    metric_files = job_log.metrics.write(job_dir) if spec.metric_definitions else []
    status = _job_status(outcomes)
    artifacts: list[Artifact] = []
    artifact_error = ""
    if spec.output_path:
        try:
            artifacts = store_artifacts(
                [tree.root for tree in trees],
                spec.output_path,
                spec.job_name,
                env,
                settings.s3,
                stop=stop,
                staging_dir=job_dir,
            )
        except ArtifactError as exc:
            # The platform fails a job whose model cannot be stored; so does smtk local.
            artifact_error = str(exc)
            logger.error("%s", exc)
            status = status or 1
    seconds = time.monotonic() - started
    log.write("stdout", summary(spec, outcomes, seconds, artifacts, artifact_error))
    log.write("stdout", f"  logs:          {job_log.directory}")
    if spec.metric_definitions:
        table = job_log.metrics.table()
        log.write("stdout", f"\nmetrics:\n{table}\n  written: {', '.join(metric_files)}")
    return LocalResult(
        job_name=spec.job_name,
        job_dir=os.path.abspath(job_dir),
        exit_status=status,
        seconds=seconds,
        hosts=tuple(outcomes),
        artifacts=tuple(artifacts),
        artifact_error=artifact_error,
        metrics=job_log.metrics,
        logs={tree.host: job_log.path(tree.host) for tree in trees},
    )


def _run_one(
    spec: JobSpec,
    tree: HostTree,
    environ: Mapping[str, str],
    stop: Stop | None,
    settings: Settings,
    job_log: JobLog,
) -> HostRun:
    plan = LaunchPlan(
        kind="process",
        argv=TRAIN_COMMAND,
        env=train_environment(spec, tree, environ),
        cwd=os.getcwd(),
        hosts=(tree.host,),
    )
    result = run(
        plan,
        stop=stop,
        max_runtime=spec.max_runtime,
        grace_period=settings.grace_period + GRACE_MARGIN,
        progress_interval=0.0,
        sink=job_log.sink(tree.host, prefixed(plan.log_prefix)),
    )
    return HostRun.of(tree.host, tree.root, result.exit_status)


def _run_hosts(
    spec: JobSpec,
    trees: list[HostTree],
    environ: Mapping[str, str],
    stop: Stop | None,
    settings: Settings,
    job_log: JobLog,
) -> list[HostRun]:

    roots = {tree.host: tree.root for tree in trees}
    base = train_environment(spec, trees[0], environ)
    base.pop("SAGEMAKER_BASE_DIR", None)
    statuses = run_hosts(
        roots,
        base,
        stop=stop,
        max_runtime=spec.max_runtime,
        stop_grace=settings.grace_period + GRACE_MARGIN,
        sink_for=lambda host: job_log.sink(host, host_sink(host)),
    )
    return [HostRun.of(tree.host, tree.root, statuses.get(tree.host, 1)) for tree in trees]


def _run_in_containers(
    spec: JobSpec, trees: list[HostTree], environ: Mapping[str, str], stop: Stop | None, job_log: JobLog
) -> list[HostRun]:

    if len(trees) > 1:
        raise ConfigError("--image", None, "one host (InstanceCount 1) with a container image", len(trees))
    tree = trees[0]
    container_env = {**dict(spec.environment), "TRAINING_JOB_NAME": spec.job_name}
    mounts: list[str] = []
    for channel in spec.channels:
        if channel.input_mode != "Pipe" and not channel.source.startswith("s3://"):
            mounts += ["-v", f"{channel.source}:/opt/ml/input/data/{channel.name}:ro"]
    if spec.source_dir and not spec.source_dir.startswith("s3://"):  # S3 code: train fetches it
        shutil.copytree(spec.source_dir, os.path.join(tree.root, "code"), dirs_exist_ok=True, symlinks=True)
    status = run_in_container(
        spec.image or "",
        tree.root,
        environ=container_env,
        max_runtime=spec.max_runtime,
        extra_args=mounts,
        stop=stop,
        sink=job_log.sink(tree.host, prefixed("")),
        gpus=spec.gpus,
    )
    return [HostRun.of(tree.host, tree.root, status)]


def root_failure(outcomes: list[HostRun]) -> Failure | None:
    """The job's root cause among the hosts' failure records (earliest root cause first)."""
    return root_cause(o.outcome for o in outcomes if isinstance(o.outcome, Failure))


def _job_status(outcomes: list[HostRun]) -> int:
    root = root_failure(outcomes)
    if root is None:
        return 0
    for outcome in outcomes:
        if outcome.outcome is root:
            return outcome.exit_status
    return root.exit_status


def _first_line(path: str) -> str | None:
    text = read_text(path, 64 * 1024)
    if text is None:
        return None
    return (text.splitlines() or [""])[0].strip() or "(empty failure file)"


def _listing(directory: str, limit: int = 6) -> str:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return "(missing)"
    if not names:
        return "(empty)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def summary(
    spec: JobSpec,
    outcomes: list[HostRun],
    seconds: float,
    artifacts: Sequence[Artifact] = (),
    artifact_error: str = "",
) -> str:
    """The lines printed at the end of ``smtk local``: verdict, root cause, each host's files,
    and the stored model.tar.gz / output.tar.gz."""
    status = _job_status(outcomes) or (1 if artifact_error else 0)
    root = root_failure(outcomes)
    verdict = "succeeded" if status == 0 else f"failed (exit status {status})"
    lines = [
        "",
        f"smtk local: job {spec.job_name!r} {verdict} in {seconds:.1f} s on {len(outcomes)} host(s)",
    ]
    if root is not None and len(outcomes) > 1:
        lines.append(f"  root cause: {root.describe()}")
    for outcome in outcomes:
        output = os.path.join(outcome.root, "output")
        state = "success" if outcome.exit_status == 0 else f"failure, exit status {outcome.exit_status}"
        lines.append(f"  {outcome.host}: {state}")
        model = os.path.join(outcome.root, "model")
        lines.append(f"    model:       {model}  {_listing(model)}")
        lines.append(
            f"    output data: {os.path.join(output, 'data')}  {_listing(os.path.join(output, 'data'))}"
        )
        reason = _first_line(os.path.join(output, "failure"))
        if reason is not None:
            lines.append(f"    failure:     {os.path.join(output, 'failure')}")
            lines.append(f"                 {reason}")
    for artifact in artifacts:
        lines.append(
            f"  {artifact.name + ':':14} {artifact.location}  ({artifact.files} files, "
            f"{human_size(artifact.size)} -> {human_size(artifact.packed)})"
        )
    if artifact_error:
        lines.append(f"  artifacts:     not stored: {artifact_error}")
    return "\n".join(lines)
