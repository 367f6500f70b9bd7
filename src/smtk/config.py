"""Reading and validating the platform's JSON config files into typed records.

This is the only module that parses ``input/config/*.json``. Each reader returns
immutable records (plus the raw dict where the reference exports it verbatim) and
raises :class:`~smtk.errors.ConfigError` naming the file, the key, what was expected
and what was found. A missing optional file is not an error: the readers return the
same defaults the reference toolkit uses.

Host, channel and interface names end up in paths and in ``mpirun``/``ssh`` argv, so
they are checked against conservative patterns here: a name such as
``-oProxyCommand=...`` or ``../etc`` never gets further than this module. Every file is
also checked for what would only fail later, far from its cause: something other than a
regular file (a FIFO would block the reader forever), more than
:data:`MAX_CONFIG_BYTES`, invalid UTF-8, duplicate keys, nesting deep enough to exhaust
the parser, and NUL characters or unpaired surrogates (which cannot be passed to a child
process in argv or an environment variable).

::

    from smtk import config
    raw, channels = config.read_input_data_config("/opt/ml/input/config/inputdataconfig.json")
    resource = config.read_resource_config("/opt/ml/input/config/resourceconfig.json")
    resource.current_host, resource.hosts, channels["train"].input_mode
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, cast

from smtk.errors import ConfigError
from smtk.files import kind_of

InputMode = Literal["File", "FastFile", "Pipe"]
DistributionType = Literal["FullyReplicated", "ShardedByS3Key"]
RecordWrapper = Literal["None", "RecordIO"]

INPUT_MODES: tuple[InputMode, ...] = ("File", "FastFile", "Pipe")
DISTRIBUTION_TYPES: tuple[DistributionType, ...] = ("FullyReplicated", "ShardedByS3Key")
RECORD_WRAPPERS: tuple[RecordWrapper, ...] = ("None", "RecordIO")

DEFAULT_GROUP = "homogeneousCluster"
DEFAULT_INSTANCE_TYPE = "local"
DEFAULT_INTERFACE = "eth0"

#: A config file larger than this is rejected before it is read (the platform's are a few KiB).
MAX_CONFIG_BYTES = 64 * 1024 * 1024

# Used with fullmatch: a trailing newline must not slip through as it would with "$".
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_CHANNEL_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_IFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")


# The records are NamedTuples, not dataclasses: importing dataclasses (inspect, ast, ...)
# would be most of the cost of ``import smtk``.


class ChannelConfig(NamedTuple):
    """One entry of ``inputdataconfig.json``."""

    name: str
    input_mode: InputMode = "File"
    distribution: DistributionType = "FullyReplicated"
    record_wrapper: RecordWrapper = "None"
    content_type: str | None = None
    compression: str | None = None


class InstanceGroup(NamedTuple):
    """One entry of ``resourceconfig.json``'s ``instance_groups``."""

    name: str
    instance_type: str
    hosts: tuple[str, ...]


class ResourceConfig(NamedTuple):
    """``resourceconfig.json``: which hosts take part and who this host is."""

    current_host: str
    hosts: tuple[str, ...]
    current_instance_type: str = DEFAULT_INSTANCE_TYPE
    current_group_name: str = DEFAULT_GROUP
    instance_groups: tuple[InstanceGroup, ...] = ()
    network_interface_name: str = DEFAULT_INTERFACE
    topology: tuple[Any, ...] = ()
    #: The file's content as read (exported verbatim as ``SM_RESOURCE_CONFIG``).
    raw: Mapping[str, Any] = MappingProxyType({})


class CheckpointConfig(NamedTuple):
    """``checkpointconfig.json``: where checkpoints live locally and in S3."""

    local_path: str
    s3_uri: str | None = None


def load_json_object(path: str, *, required: bool = False) -> dict[str, Any] | None:
    """Read ``path`` as a JSON object; ``None`` if it does not exist and is optional.

    Duplicate keys are rejected: the platform never writes them, and silently taking
    the last one would hide a broken generator. A UTF-8 byte-order mark is accepted.
    """
    name = os.path.basename(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ConfigError(
                name, None, "a readable file", f"<a dangling symbolic link at {path}>"
            ) from None
        if required:
            raise ConfigError(name, None, "the file to exist", f"<nothing at {path}>") from None
        return None
    except OSError as exc:
        raise ConfigError(name, None, "a readable file", f"<{exc.strerror}: {path}>") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(name, None, "a regular JSON file", f"<{kind_of(info.st_mode)} at {path}>")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            name, None, f"at most {MAX_CONFIG_BYTES} bytes", f"<{info.st_size} bytes at {path}>"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(name, None, "a readable file", f"<{exc.strerror}: {path}>") from None
    return parse_json_object(name, data)


def parse_json_object(name: str, data: bytes) -> dict[str, Any]:
    """Decode the bytes of config file ``name`` into a JSON object (see :func:`load_json_object`)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            name, None, f"at most {MAX_CONFIG_BYTES} bytes", f"<more than {MAX_CONFIG_BYTES} bytes>"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            name, None, "UTF-8 text", f"<invalid byte 0x{data[exc.start]:02x} at offset {exc.start}>"
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates(name))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            name, None, "valid JSON", f"<{exc.msg} at line {exc.lineno} column {exc.colno}>"
        ) from None
    except ValueError as exc:
        # Python refuses integer literals of more than sys.get_int_max_str_digits() digits.
        raise ConfigError(name, None, "JSON numbers Python can read", f"<{str(exc).split(':')[0]}>") from None
    except RecursionError:
        raise ConfigError(
            name, None, "JSON nested at most a few hundred levels", "<deeper nesting>"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(name, None, "a JSON object", f"<a JSON {_json_type(value)}>")
    # Cheap pre-check: only text with \u escapes can hold NUL or lone surrogates.
    if "\\u" in text:
        _check_text(name, value, None)
    return value


def _check_text(name: str, value: object, key: str | None) -> None:
    """Reject NUL characters and unpaired surrogates anywhere in a decoded document."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigError(name, key, "text without NUL characters", "<a NUL character (\\u0000)>")
        if any("\ud800" <= char <= "\udfff" for char in value):
            raise ConfigError(name, key, "valid Unicode text", "<an unpaired surrogate (\\ud800-\\udfff)>")
    elif isinstance(value, dict):
        for child_key, child in value.items():
            _check_text(name, child_key, key)
            _check_text(name, child, child_key if key is None else f"{key}.{child_key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_text(name, child, f"{key}[{index}]" if key is not None else f"[{index}]")


def _no_duplicates(name: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConfigError(name, short_key(key), "each key once", "<the key repeated>")
            result[key] = value
        return result

    return hook


def short_key(key: str, limit: int = 60) -> str:
    """A key as named in a message: hostile keys can be megabytes long."""
    return key if len(key) <= limit else key[: limit - 3] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: Stands for a key that is not there at all, in messages (``found <nothing: ...>``).
ABSENT: Any = _Absent()


def describe(value: object) -> str:
    """What was found, for a message: the JSON type and the start of the value."""
    if value is ABSENT:
        return "<nothing: the key is absent>"
    if value is None:
        return "<null>"
    text = json.dumps(value, ensure_ascii=False, default=repr)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"<{_json_type(value)} {text}>"


_found = describe


# --- hyperparameters.json ---------------------------------------------------------------


def read_hyperparameters(path: str) -> dict[str, Any]:
    """The raw (undecoded) hyperparameters; ``{}`` when the file is absent."""
    return load_json_object(path) or {}


# --- inputdataconfig.json ---------------------------------------------------------------


def read_input_data_config(path: str) -> tuple[dict[str, Any], dict[str, ChannelConfig]]:
    """The raw channel dict (exported as ``SM_INPUT_DATA_CONFIG``) and typed channels."""
    raw = load_json_object(path) or {}
    name = os.path.basename(path)
    channels: dict[str, ChannelConfig] = {}
    for channel, spec in raw.items():
        channels[channel] = parse_channel(name, channel, spec)
    return raw, channels


def parse_channel(source: str, channel: str, spec: object) -> ChannelConfig:
    """Validate one channel entry; ``source`` names the file for error messages."""
    if not _CHANNEL_RE.fullmatch(channel) or channel in (".", ".."):
        raise ConfigError(
            source,
            short_key(channel),
            "a channel name of 1-128 letters, digits, '.', '_' or '-'",
            _found(channel),
        )
    if not isinstance(spec, dict):
        raise ConfigError(source, channel, "an object describing the channel", _found(spec))
    mode = _choice(source, channel, spec, "TrainingInputMode", INPUT_MODES, "File")
    dist = _choice(source, channel, spec, "S3DistributionType", DISTRIBUTION_TYPES, "FullyReplicated")
    wrapper = _choice(source, channel, spec, "RecordWrapperType", RECORD_WRAPPERS, "None")
    content_type = _optional_str(source, f"{channel}.ContentType", spec.get("ContentType"))
    compression = _optional_str(source, f"{channel}.CompressionType", spec.get("CompressionType"))
    return ChannelConfig(
        name=channel,
        input_mode=cast(InputMode, mode),
        distribution=cast(DistributionType, dist),
        record_wrapper=cast(RecordWrapper, wrapper),
        content_type=content_type,
        compression=compression,
    )


def _choice(
    source: str, channel: str, spec: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str
) -> str:
    value = spec.get(key, default)
    if isinstance(value, str):
        # The platform writes the canonical spelling; accept other cases, as
        # PipeModeDataset does, but hand back the canonical one.
        for choice in allowed:
            if value.lower() == choice.lower():
                return choice
    raise ConfigError(source, f"{channel}.{key}", "one of " + ", ".join(allowed), _found(value))


def _optional_str(source: str, key: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(source, key, "a string", _found(value))


# --- resourceconfig.json ----------------------------------------------------------------


def default_resource_config() -> dict[str, Any]:
    """The one-host config the reference writes when there is no ``/opt/ml`` tree."""
    host = socket.gethostname()
    return {
        "current_host": host,
        "hosts": [host],
        "current_instance_group": DEFAULT_GROUP,
        "instance_groups": [
            {"instance_group_name": DEFAULT_GROUP, "instance_type": DEFAULT_INSTANCE_TYPE, "hosts": [host]}
        ],
    }


def read_resource_config(path: str) -> ResourceConfig:
    """Parse ``resourceconfig.json``; a missing file means a one-host job on this machine."""
    raw = load_json_object(path)
    if raw is None:
        raw = default_resource_config()
    return parse_resource_config(os.path.basename(path), raw)


def parse_resource_config(source: str, raw: dict[str, Any]) -> ResourceConfig:
    hosts = _host_list(source, "hosts", raw.get("hosts", ABSENT), required=True)
    current = raw.get("current_host", ABSENT)
    if not isinstance(current, str) or not _HOST_RE.fullmatch(current):
        raise ConfigError(source, "current_host", "a host name such as 'algo-1'", _found(current))
    if current not in hosts:
        raise ConfigError(source, "current_host", f"one of the hosts {_short(list(hosts))}", _found(current))
    instance_type = raw.get("current_instance_type", DEFAULT_INSTANCE_TYPE)
    if not isinstance(instance_type, str):
        raise ConfigError(source, "current_instance_type", "a string", _found(instance_type))
    group_name = raw.get("current_group_name", DEFAULT_GROUP)
    if not isinstance(group_name, str) or not group_name:
        raise ConfigError(source, "current_group_name", "a non-empty string", _found(group_name))
    iface = raw.get("network_interface_name", DEFAULT_INTERFACE)
    if not isinstance(iface, str) or not _IFACE_RE.fullmatch(iface):
        raise ConfigError(source, "network_interface_name", "an interface name such as 'eth0'", _found(iface))
    topology = raw.get("topology", [])
    if not isinstance(topology, list):
        raise ConfigError(source, "topology", "a list", _found(topology))
    groups = _instance_groups(source, raw.get("instance_groups", []), hosts)
    if "current_group_name" in raw and groups and group_name not in {g.name for g in groups}:
        raise ConfigError(
            source,
            "current_group_name",
            "the name of one of the instance_groups " + _short([g.name for g in groups]),
            _found(group_name),
        )
    return ResourceConfig(
        current_host=current,
        hosts=hosts,
        current_instance_type=instance_type,
        current_group_name=group_name,
        instance_groups=groups,
        network_interface_name=iface,
        topology=tuple(topology),
        raw=raw,
    )


def _host_list(source: str, key: str, value: object, *, required: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or (required and not value):
        raise ConfigError(source, key, "a non-empty list of host names", _found(value))
    seen: list[str] = []
    for host in value:
        if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
            raise ConfigError(source, key, "host names of letters, digits, '.', '_' or '-'", _found(host))
        if host in seen:
            raise ConfigError(source, key, "each host once", f"<{host!r} twice>")
        seen.append(host)
    return tuple(seen)


def _short(values: list[str]) -> str:
    text = repr(values)
    return text if len(text) <= 80 else text[:76] + "...]"


def _instance_groups(source: str, value: object, hosts: tuple[str, ...]) -> tuple[InstanceGroup, ...]:
    if not isinstance(value, list):
        raise ConfigError(source, "instance_groups", "a list of groups", _found(value))
    groups: list[InstanceGroup] = []
    for index, group in enumerate(value):
        key = f"instance_groups[{index}]"
        if not isinstance(group, dict):
            raise ConfigError(source, key, "an object", _found(group))
        name = group.get("instance_group_name", ABSENT)
        if not isinstance(name, str) or not name:
            raise ConfigError(source, f"{key}.instance_group_name", "a non-empty string", _found(name))
        itype = group.get("instance_type", DEFAULT_INSTANCE_TYPE)
        if not isinstance(itype, str):
            raise ConfigError(source, f"{key}.instance_type", "a string", _found(itype))
        members = _host_list(source, f"{key}.hosts", group.get("hosts", ABSENT), required=False)
        strangers = [h for h in members if h not in hosts]
        if strangers:
            raise ConfigError(
                source, f"{key}.hosts", f"hosts listed in 'hosts' {_short(list(hosts))}", _found(strangers)
            )
        if any(existing.name == name for existing in groups):
            raise ConfigError(
                source, f"{key}.instance_group_name", "each group name once", f"<{name!r} twice>"
            )
        groups.append(InstanceGroup(name=name, instance_type=itype, hosts=members))
    return tuple(groups)


# --- checkpointconfig.json --------------------------------------------------------------


def read_checkpoint_config(path: str, default_local_path: str) -> CheckpointConfig | None:
    """Parse ``checkpointconfig.json``; ``None`` when the file is absent."""
    raw = load_json_object(path)
    if raw is None:
        return None
    source = os.path.basename(path)
    local = raw.get("LocalPath", default_local_path)
    if not isinstance(local, str) or not local:
        raise ConfigError(source, "LocalPath", "a directory path", _found(local))
    s3_uri = raw.get("S3Uri")
    if s3_uri is not None and (not isinstance(s3_uri, str) or not s3_uri.startswith("s3://")):
        raise ConfigError(source, "S3Uri", "an s3://bucket/prefix URI", _found(s3_uri))
    return CheckpointConfig(local_path=local, s3_uri=s3_uri)
