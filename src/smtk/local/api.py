"""``smtk local`` from Python: run a job from a notebook or a test and get its result.

::

    import smtk.local

    result = smtk.local.run(
        "train.py",
        source_dir="src",
        hyperparameters={"epochs": 3, "lr": 0.01},
        channels={"train": "data/train"},
        metric_definitions=[{"Name": "loss", "Regex": "loss=([0-9.]+)"}],
        output_path="s3://my-bucket/results",
    )
    result.succeeded, result.exit_status     # True, 0
    result.failure                           # the root cause's failure record, when it failed
    result.metric("loss")                    # [0.9, 0.5, 0.3]
    result.model_data                        # s3://my-bucket/results/train-.../output/model.tar.gz

It runs exactly what ``smtk local`` runs (same layout, hosts, containers, summary on
stdout) and never raises for the job's own failures: a bad spec or argument raises
:class:`~smtk.errors.ConfigError`. Hyperparameters are JSON-encoded as the SageMaker
SDK encodes them. Called from the main thread, Ctrl-C and SIGTERM stop the job as they
stop ``smtk local`` (the job ends with 130 or 143 and the result says so).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence

from smtk.local.metrics import parse_definitions
from smtk.local.runner import LocalResult, run_job
from smtk.local.spec import ChannelSpec, JobSpec, default_job_dir, load_spec, merged, resolve_location
from smtk.stop import Stop


def run(
    entry_point: str | None = None,
    *,
    source_dir: str | None = None,
    spec: str | JobSpec | None = None,
    hyperparameters: Mapping[str, object] | None = None,
    channels: Mapping[str, str | ChannelSpec] | None = None,
    instance_count: int | None = None,
    job_name: str | None = None,
    job_dir: str | None = None,
    environment: Mapping[str, str] | None = None,
    output_path: str | None = None,
    metric_definitions: Sequence[Mapping[str, str]] | None = None,
    max_runtime: float | None = None,
    image: str | None = None,
    checkpoint_s3: str | None = None,
    stop: Stop | None = None,
) -> LocalResult:
    """Run a job on this machine, as ``smtk local`` does, and return how it ended.

    ``spec`` is a CreateTrainingJob-shaped JSON file (or a :class:`JobSpec`); the other
    arguments override it, as ``smtk local``'s flags do. ``channels`` map a channel name
    to a local path, ``file://`` or ``s3://`` URI (File mode), or to a :class:`ChannelSpec`.
    """
    cwd = os.getcwd()
    job = merged(
        load_spec(spec) if isinstance(spec, str) else spec,
        caller="smtk.local.run",
        names={"spec": "spec=...", "entry_point": "entry_point", "instance_count": "instance_count"},
        entry_point=entry_point,
        job_name=job_name,
        hyperparameters={k: json.dumps(v) for k, v in (hyperparameters or {}).items()},
        channels=[
            source if isinstance(source, ChannelSpec) else ChannelSpec(name, resolve_location(source, cwd))
            for name, source in (channels or {}).items()
        ],
        environment=environment or {},
        instance_count=instance_count,
        source_dir=os.path.abspath(source_dir) if source_dir else None,
        output_path=resolve_location(output_path, cwd) if output_path else None,
        metric_definitions=(
            parse_definitions("metric_definitions", list(metric_definitions))
            if metric_definitions is not None
            else None
        ),
        max_runtime=max_runtime,
        image=image,
        checkpoint_s3=checkpoint_s3,
    )
    where = job_dir or default_job_dir(job.job_name)
    own = None
    if stop is None and threading.current_thread() is threading.main_thread():
        own = stop = Stop().install()  # Ctrl-C reaches the job as a stop, for this run only
    try:
        # A stop before the hosts ran (laying out, downloading) raises Stopped.
        return run_job(job, where, stop=stop)
    finally:
        if own is not None:
            own.restore()
