"""The job description for ``smtk local``: a spec file and/or command-line flags.

The spec file is JSON shaped like the platform's CreateTrainingJob request::

    {
      "TrainingJobName": "quickstart",
      "HyperParameters": {"epochs": "3", "sagemaker_program": "train.py",
                          "sagemaker_submit_directory": "examples/quickstart"},
      "AlgorithmSpecification": {"TrainingInputMode": "File"},
      "InputDataConfig": [
        {"ChannelName": "train", "InputMode": "Pipe", "RecordWrapperType": "RecordIO",
         "DataSource": {"S3DataSource": {"S3Uri": "data/train",
                                         "S3DataDistributionType": "FullyReplicated"}}}
      ],
      "ResourceConfig": {"InstanceCount": 1, "InstanceType": "local"},
      "Environment": {"MY_SETTING": "1"},
      "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
      "CheckpointConfig": {"S3Uri": "s3://bucket/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    }

Data sources may be local paths (relative to the spec file), ``file://`` URIs or
``s3://`` prefixes. Flags given on the command line override the file.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from smtk.config import DISTRIBUTION_TYPES, INPUT_MODES, RECORD_WRAPPERS, load_json_object
from smtk.errors import ConfigError
from smtk.local.metrics import MetricDefinition, parse_definitions

_NAME = re.compile(r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$")


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    source: str
    input_mode: str = "File"
    distribution: str = "FullyReplicated"
    record_wrapper: str = "None"
    content_type: str | None = None
    compression: str | None = None


@dataclass(frozen=True)
class JobSpec:
    job_name: str
    source_dir: str | None = None
    entry_point: str | None = None
    #: As the platform stores them: string -> string (JSON-encoded by the SDK).
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[ChannelSpec, ...] = ()
    instance_count: int = 1
    instance_type: str = "local"
    environment: Mapping[str, str] = field(default_factory=dict)
    max_runtime: float | None = None
    checkpoint_s3: str | None = None
    checkpoint_local: str | None = None
    output_s3: str | None = None
    image: str | None = None
    #: ``OutputDataConfig.S3OutputPath``: where model.tar.gz and output.tar.gz go.
    output_path: str | None = None
    #: ``AlgorithmSpecification.MetricDefinitions``.
    metric_definitions: tuple[MetricDefinition, ...] = ()
    #: GPUs for ``--image`` runs: ``all``, a count or device indices (``0,1``).
    gpus: str | None = None


def encode_hyperparameter(text: str) -> str:
    """``k=v`` from the command line, stored the way the SageMaker SDK stores it.

    A value that is valid JSON (``3``, ``0.1``, ``true``, ``[1, 2]``) keeps its type;
    anything else is a string. Either way the stored form is ``json.dumps(value)``.
    """
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return json.dumps(value)


def parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(what, None, "KEY=VALUE", pair)
        result[key] = value
    return result


def parse_channel_flag(text: str) -> ChannelSpec:
    """``NAME=PATH[:MODE]``, e.g. ``train=data/train`` or ``train=s3://b/p:Pipe``."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError("--channel", None, "NAME=PATH[:File|FastFile|Pipe]", text)
    mode = "File"
    head, colon, tail = rest.rpartition(":")
    if colon and tail in INPUT_MODES:
        rest, mode = head, tail
    return ChannelSpec(name=name, source=resolve_location(rest, os.getcwd()), input_mode=mode)


def _str(source: str, key: str, value: object, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, str) and value:
        return value
    raise ConfigError(source, key, "a non-empty string", value)


def _obj(source: str, key: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise ConfigError(source, key, "an object", value)


def _choice(source: str, key: str, value: object, allowed: Sequence[str], default: str) -> str:
    if value is None:
        return default
    if isinstance(value, str) and value in allowed:
        return value
    raise ConfigError(source, key, "one of " + ", ".join(allowed), value)


def resolve_location(uri: str, base_dir: str) -> str:
    """``s3://`` URIs as they are; ``file://`` URIs and paths absolute (relative to ``base_dir``)."""
    if uri.startswith("s3://"):
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(uri)))


def load_spec(path: str) -> JobSpec:
    """Parse a CreateTrainingJob-shaped JSON file."""
    source = os.path.basename(path)
    raw = load_json_object(path, required=True) or {}
    base = os.path.dirname(os.path.abspath(path))
    hps_raw = _obj(source, "HyperParameters", raw.get("HyperParameters"))
    hyperparameters: dict[str, str] = {}
    for key, value in hps_raw.items():
        # The API takes strings; be lenient with numbers and booleans written unquoted.
        hyperparameters[key] = value if isinstance(value, str) else json.dumps(value)
    algo = _obj(source, "AlgorithmSpecification", raw.get("AlgorithmSpecification"))
    default_mode = _choice(
        source, "AlgorithmSpecification.TrainingInputMode", algo.get("TrainingInputMode"), INPUT_MODES, "File"
    )
    channels = []
    configs = raw.get("InputDataConfig", [])
    if not isinstance(configs, list):
        raise ConfigError(source, "InputDataConfig", "a list of channels", configs)
    for index, entry in enumerate(configs):
        key = f"InputDataConfig[{index}]"
        item = _obj(source, key, entry)
        name = _str(source, f"{key}.ChannelName", item.get("ChannelName"), optional=False)
        data_source = _obj(source, f"{key}.DataSource", item.get("DataSource"))
        s3 = _obj(source, f"{key}.DataSource.S3DataSource", data_source.get("S3DataSource"))
        file_source = _obj(source, f"{key}.DataSource.FileDataSource", data_source.get("FileDataSource"))
        uri = s3.get("S3Uri") or file_source.get("FileUri")
        uri = _str(source, f"{key}.DataSource.S3DataSource.S3Uri", uri, optional=False)
        assert name is not None and uri is not None
        channels.append(
            ChannelSpec(
                name=name,
                source=resolve_location(uri, base),
                input_mode=_choice(
                    source, f"{key}.InputMode", item.get("InputMode"), INPUT_MODES, default_mode
                ),
                distribution=_choice(
                    source,
                    f"{key}.DataSource.S3DataSource.S3DataDistributionType",
                    s3.get("S3DataDistributionType"),
                    DISTRIBUTION_TYPES,
                    "FullyReplicated",
                ),
                record_wrapper=_choice(
                    source, f"{key}.RecordWrapperType", item.get("RecordWrapperType"), RECORD_WRAPPERS, "None"
                ),
                content_type=_str(source, f"{key}.ContentType", item.get("ContentType")),
                compression=_str(source, f"{key}.CompressionType", item.get("CompressionType")),
            )
        )
    resources = _obj(source, "ResourceConfig", raw.get("ResourceConfig"))
    count = resources.get("InstanceCount", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 64:
        raise ConfigError(source, "ResourceConfig.InstanceCount", "an integer from 1 to 64", count)
    environment = _obj(source, "Environment", raw.get("Environment"))
    for key, value in environment.items():
        if not isinstance(value, str):
            raise ConfigError(source, f"Environment.{key}", "a string", value)
    stopping = _obj(source, "StoppingCondition", raw.get("StoppingCondition"))
    max_runtime = stopping.get("MaxRuntimeInSeconds")
    if max_runtime is not None and (
        not isinstance(max_runtime, (int, float)) or isinstance(max_runtime, bool) or max_runtime <= 0
    ):
        raise ConfigError(source, "StoppingCondition.MaxRuntimeInSeconds", "a positive number", max_runtime)
    checkpoint = _obj(source, "CheckpointConfig", raw.get("CheckpointConfig"))
    checkpoint_s3 = _str(source, "CheckpointConfig.S3Uri", checkpoint.get("S3Uri"))
    output = _obj(source, "OutputDataConfig", raw.get("OutputDataConfig"))
    output_path = _str(source, "OutputDataConfig.S3OutputPath", output.get("S3OutputPath")) or None
    name = raw.get("TrainingJobName") or default_job_name(_decode(hyperparameters.get("sagemaker_program")))
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(source, "TrainingJobName", "1-63 letters, digits or hyphens", name)
    program = _decode(hyperparameters.get("sagemaker_program"))
    submit = _decode(hyperparameters.get("sagemaker_submit_directory"))
    return JobSpec(
        job_name=name,
        source_dir=resolve_location(submit, base) if submit else None,
        entry_point=program,
        hyperparameters={
            k: v
            for k, v in hyperparameters.items()
            if k not in ("sagemaker_program", "sagemaker_submit_directory")
        },
        channels=tuple(channels),
        instance_count=count,
        instance_type=str(resources.get("InstanceType", "local")),
        environment=dict(environment),
        max_runtime=float(max_runtime) if max_runtime is not None else None,
        checkpoint_s3=checkpoint_s3,
        checkpoint_local=_str(source, "CheckpointConfig.LocalPath", checkpoint.get("LocalPath")),
        output_s3=_decode(hyperparameters.get("sagemaker_s3_output")),
        image=_str(source, "AlgorithmSpecification.TrainingImage", algo.get("TrainingImage")),
        output_path=resolve_location(output_path, base) if output_path else None,
        metric_definitions=parse_definitions(source, algo.get("MetricDefinitions")),
    )


def _decode(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def default_job_name(entry_point: str | None) -> str:
    """A job name from the entry point's file name (``train_model.py`` -> ``train-model``)."""
    stem = os.path.splitext(os.path.basename(entry_point or "job"))[0]
    return (re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-") or "job")[:40]


def merged(
    base: JobSpec | None,
    *,
    caller: str,
    names: Mapping[str, str],
    entry_point: str | None,
    job_name: str | None,
    hyperparameters: Mapping[str, str],
    channels: Sequence[ChannelSpec],
    environment: Mapping[str, str],
    instance_count: int | None,
    **changes: Any,
) -> JobSpec:
    """``base`` (or a new job for ``entry_point``) with what ``smtk local``'s flags or
    :func:`smtk.local.run`'s arguments give: hyperparameters, channels (by name) and
    environment merged in, every other change replacing. ``caller`` and ``names`` (the
    ``spec``, ``entry_point`` and ``instance_count`` arguments as the caller spells them)
    name what is wrong in errors."""
    if base is None:
        if not entry_point:
            raise ConfigError(
                caller, names["entry_point"], f"a script to run (or {names['spec']})", "<nothing>"
            )
        base = JobSpec(job_name=job_name or default_job_name(entry_point))
    if instance_count is not None and not 1 <= instance_count <= 64:
        raise ConfigError(caller, names["instance_count"], "an integer from 1 to 64", instance_count)
    by_name = {c.name: c for c in base.channels}
    by_name.update({c.name: c for c in channels})
    return with_overrides(
        base,
        job_name=job_name,
        entry_point=entry_point,
        hyperparameters={**base.hyperparameters, **hyperparameters},
        channels=tuple(by_name.values()),
        environment={**base.environment, **environment},
        instance_count=instance_count,
        **changes,
    )


def default_job_dir(job_name: str) -> str:
    """``smtk-jobs/<job name>-<date>-<time>`` in the current directory."""
    return os.path.join("smtk-jobs", f"{job_name}-{time.strftime('%Y%m%d-%H%M%S')}")


def with_overrides(spec: JobSpec, **changes: Any) -> JobSpec:
    """``spec`` with every non-``None`` change applied."""
    return replace(spec, **{k: v for k, v in changes.items() if v is not None})
