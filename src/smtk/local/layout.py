"""Laying out one ``/opt/ml`` tree per host for ``smtk local``.

::

    <job-dir>/
    ├── .smtk-local-job          marks the directory as ours (safe to clean on reuse)
    ├── algo-1/                  SAGEMAKER_BASE_DIR of host algo-1
    │   ├── input/config/        hyperparameters.json, inputdataconfig.json,
    │   │                        resourceconfig.json[, checkpointconfig.json]
    │   ├── input/data/<channel> File: a link to the data (or a shard of it); Pipe: FIFOs
    │   ├── code/ model/ output/ checkpoints/
    └── algo-2/ ...

Hyperparameters are stored JSON-encoded as the SageMaker SDK stores them, and the
code is passed as ``sagemaker_submit_directory`` so ``train`` fetches it exactly as on
the platform. S3 data sources are downloaded (sharded by key when asked).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from smtk.errors import ConfigError
from smtk.local.spec import ChannelSpec, JobSpec
from smtk.s3 import parse_s3_uri
from smtk.s3.batch import download_prefix
from smtk.settings import S3Settings
from smtk.stop import Stop

logger = logging.getLogger("smtk")

MARKER = ".smtk-local-job"
GROUP = "homogeneousCluster"


@dataclass(frozen=True)
class HostTree:
    host: str
    root: str
    index: int


def host_names(count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, count + 1)]


def prepare_job_dir(job_dir: str) -> None:
    """Create ``job_dir``; reuse it only if it is empty or an earlier ``smtk local`` job."""
    if os.path.isdir(job_dir) and os.listdir(job_dir):
        if not os.path.exists(os.path.join(job_dir, MARKER)):
            raise ConfigError(
                "--job-dir",
                None,
                "an empty directory or one made by an earlier smtk local run",
                f"<{job_dir} holds other files>",
            )
        for entry in os.listdir(job_dir):
            path = os.path.join(job_dir, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    os.makedirs(job_dir, exist_ok=True)
    with open(os.path.join(job_dir, MARKER), "w", encoding="utf-8") as handle:
        handle.write("made by smtk local; the whole directory is recreated on reuse\n")


def lay_out(
    spec: JobSpec,
    job_dir: str,
    environ: Mapping[str, str],
    *,
    container: bool = False,
    settings: S3Settings | None = None,
    stop: Stop | None = None,
) -> list[HostTree]:
    """Write every host's tree under ``job_dir`` and return them, master first.

    With ``container``, paths of this machine mean nothing inside the image: local
    channels become empty mount points and the code is expected in ``code/``. ``s3://``
    channels are downloaded (many objects in flight, with progress); a stop ends the
    download and raises :class:`~smtk.stop.Stopped`.
    """
    fetch = _Fetch(environ, settings or S3Settings(), stop)
    prepare_job_dir(job_dir)
    hosts = host_names(spec.instance_count)
    trees = []
    for index, host in enumerate(hosts):
        root = os.path.join(os.path.abspath(job_dir), host)
        _write_tree(spec, root, host, index, hosts, environ, container, fetch)
        trees.append(HostTree(host=host, root=root, index=index))
    return trees


def lay_out_host(
    spec: JobSpec,
    root: str,
    host: str,
    hosts: list[str],
    environ: Mapping[str, str],
    *,
    settings: S3Settings | None = None,
    stop: Stop | None = None,
    interface: str = "eth0",
) -> HostTree:
    """Write only ``host``'s tree at ``root`` (under a cluster scheduler every host writes its
    own, :mod:`smtk.scheduler.bootstrap`); its ``s3://`` channels are downloaded, its
    ``ShardedByS3Key`` share only."""
    index = hosts.index(host)
    fetch = _Fetch(environ, settings or S3Settings(), stop)
    _write_tree(spec, root, host, index, hosts, environ, False, fetch, interface=interface)
    return HostTree(host=host, root=root, index=index)


def _write_tree(
    spec: JobSpec,
    root: str,
    host: str,
    index: int,
    hosts: list[str],
    environ: Mapping[str, str],
    container: bool,
    fetch: _Fetch,
    *,
    interface: str = "eth0",
) -> None:
    config_dir = os.path.join(root, "input", "config")
    for sub in ("input/config", "input/data", "code", "model", "output/data", "checkpoints"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    _dump(os.path.join(config_dir, "hyperparameters.json"), _hyperparameters(spec, environ, container))
    _dump(os.path.join(config_dir, "inputdataconfig.json"), _input_data_config(spec))
    _dump(
        os.path.join(config_dir, "resourceconfig.json"),
        {
            "current_host": host,
            "current_instance_type": spec.instance_type,
            "current_group_name": GROUP,
            "hosts": hosts,
            "instance_groups": [
                {"instance_group_name": GROUP, "instance_type": spec.instance_type, "hosts": hosts}
            ],
            "network_interface_name": interface,
        },
    )
    if spec.checkpoint_s3 or spec.checkpoint_local:
        local = spec.checkpoint_local or "/opt/ml/checkpoints"
        if local == "/opt/ml" or local.startswith("/opt/ml/"):
            local = os.path.join(root, os.path.relpath(local, "/opt/ml"))
        checkpoint: dict[str, str] = {"LocalPath": local}
        if spec.checkpoint_s3:
            checkpoint["S3Uri"] = spec.checkpoint_s3
        _dump(os.path.join(config_dir, "checkpointconfig.json"), checkpoint)
    for channel in spec.channels:
        if container and not channel.source.startswith("s3://"):
            os.makedirs(os.path.join(root, "input", "data", channel.name), exist_ok=True)
        elif channel.input_mode != "Pipe":
            _place_channel(
                channel, os.path.join(root, "input", "data", channel.name), index, len(hosts), fetch
            )


def _dump(path: str, value: object) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _hyperparameters(spec: JobSpec, environ: Mapping[str, str], container: bool) -> dict[str, str]:
    values = dict(spec.hyperparameters)
    if spec.entry_point:
        values["sagemaker_program"] = json.dumps(spec.entry_point)
    if spec.source_dir and spec.source_dir.startswith("s3://"):
        # An archive in S3: train fetches it on each host (in an image too), as on the platform.
        values["sagemaker_submit_directory"] = json.dumps(spec.source_dir)
    elif spec.source_dir and not container:
        values["sagemaker_submit_directory"] = json.dumps(os.path.abspath(spec.source_dir))
    values.setdefault("sagemaker_job_name", json.dumps(spec.job_name))
    values.setdefault("sagemaker_container_log_level", "20")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        values.setdefault("sagemaker_region", json.dumps(region))
    if spec.output_s3:
        values["sagemaker_s3_output"] = json.dumps(spec.output_s3)
    return values


def _input_data_config(spec: JobSpec) -> dict[str, dict[str, str]]:
    config: dict[str, dict[str, str]] = {}
    for channel in spec.channels:
        entry = {
            "TrainingInputMode": channel.input_mode,
            "S3DistributionType": channel.distribution,
            "RecordWrapperType": channel.record_wrapper,
        }
        if channel.content_type:
            entry["ContentType"] = channel.content_type
        if channel.compression:
            entry["CompressionType"] = channel.compression
        config[channel.name] = entry
    return config


def _place_channel(channel: ChannelSpec, target: str, index: int, count: int, fetch: _Fetch) -> None:
    sharded = channel.distribution == "ShardedByS3Key" and count > 1
    if channel.source.startswith("s3://"):
        fetch.channel(channel, target, index if sharded else 0, count if sharded else 1)
        return
    if not os.path.exists(channel.source):
        raise ConfigError(
            f"channel {channel.name!r}", "source", "an existing file or directory", channel.source
        )
    if os.path.isfile(channel.source):
        os.makedirs(target, exist_ok=True)
        os.symlink(channel.source, os.path.join(target, os.path.basename(channel.source)))
        return
    if not sharded:
        os.symlink(channel.source, target)
        return
    os.makedirs(target, exist_ok=True)
    files = sorted(
        os.path.relpath(os.path.join(d, f), channel.source)
        for d, _, fs in os.walk(channel.source)
        for f in fs
    )
    for position, rel in enumerate(files):
        if position % count == index:
            link = os.path.join(target, rel)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.join(channel.source, rel), link)


class _Fetch:
    """Downloads the ``s3://`` channels of every host (with the settings and the stop of the run)."""

    def __init__(self, environ: Mapping[str, str], settings: S3Settings, stop: Stop | None) -> None:
        self.environ = environ
        self.settings = settings
        self.stop = stop

    def channel(self, channel: ChannelSpec, target: str, index: int, count: int) -> None:
        """Every object under the channel's prefix (or the shard ``index`` of ``count``, by key order)."""
        label = f"channel {channel.name!r}"
        parse_s3_uri(channel.source, label, "source")
        result = download_prefix(
            channel.source,
            target,
            self.environ,
            settings=self.settings,
            stop=self.stop,
            label=label,
            select=None if count == 1 else lambda position, _key: position % count == index,
        )
        if result.stopped and self.stop is not None:
            self.stop.check(during=f"downloading {label}")
        if result.failed:
            raise ConfigError(
                label,
                "source",
                f"every object under {channel.source} downloadable",
                f"{result.failed} failed; first: {result.errors[0] if result.errors else '?'}",
            )
        logger.info("%s: %s", label, result.summary())
