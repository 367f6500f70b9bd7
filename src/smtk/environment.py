"""``Environment``: the job as the reference toolkit presents it, read without side effects.

``Environment()`` reads the ``/opt/ml`` tree (or ``$SAGEMAKER_BASE_DIR``, or
``root=``) and the process environment once, validates it, and then answers from
memory. It is a read-only mapping whose keys are exactly the reference's 37
properties, so ``dict(env)`` is ``SM_TRAINING_ENV`` and
:meth:`Environment.to_env_vars` / :meth:`Environment.to_cmd_args` produce the
reference's ``SM_*`` variables and argv byte for byte.

Unlike the reference it never writes ``os.environ``, creates no files, spawns no
process except the cached hardware probes (run lazily, the first time a count is
asked for) and never imports boto3.

::

    import smtk
    env = smtk.Environment()
    env.current_host, env.hosts, env.is_master
    env.channel_input_dirs["train"]
    env.hyperparameters.get_int("epochs", 10)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from smtk import config, hardware
from smtk.channels import ChannelMap
from smtk.config import ChannelConfig, CheckpointConfig, ResourceConfig, describe
from smtk.errors import ConfigError
from smtk.hyperparameters import (
    ArgvFormat,
    Hyperparameters,
    decode_all,
    split,
    to_cmd_args,
    to_env_vars,
)
from smtk.paths import Paths
from smtk.settings import Settings

#: The keys of the mapping: the reference's properties, in its ``dict(env)`` order (sorted).
MAPPING_KEYS: tuple[str, ...] = (
    "additional_framework_parameters",
    "channel_input_dirs",
    "current_host",
    "current_instance_group",
    "current_instance_group_hosts",
    "current_instance_type",
    "distribution_hosts",
    "distribution_instance_groups",
    "framework_module",
    "hosts",
    "hyperparameters",
    "input_config_dir",
    "input_data_config",
    "input_dir",
    "instance_groups",
    "instance_groups_dict",
    "is_hetero",
    "is_master",
    "is_modelparallel_enabled",
    "is_smddpmprun_installed",
    "is_smddprun_installed",
    "job_name",
    "log_level",
    "master_hostname",
    "model_dir",
    "module_dir",
    "module_name",
    "network_interface_name",
    "num_cpus",
    "num_gpus",
    "num_neurons",
    "output_data_dir",
    "output_dir",
    "output_intermediate_dir",
    "resource_config",
    "topology",
    "user_entry_point",
)

#: Framework flags that make the current group a distribution group (reference rule).
DISTRIBUTION_FLAGS: tuple[str, ...] = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_torch_distributed_enabled",
)

_INFO = 20  # logging.INFO, without importing logging
_LEVEL_NAMES = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARNING": 30, "WARN": 30, "INFO": 20, "DEBUG": 10}


class Environment(Mapping[str, Any]):
    """A read-only snapshot of the job: config files, environment variables, hardware."""

    def __init__(
        self, root: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self._environ: dict[str, str] = dict(os.environ if environ is None else environ)
        self.paths = Paths.at(root) if root is not None else Paths.from_environ(self._environ)
        paths = self.paths
        #: Every ``SMTK_*`` setting, read and checked once (:mod:`smtk.settings`).
        self.settings = Settings.from_environ(self._environ)

        raw_hps = config.read_hyperparameters(paths.hyperparameters_file)
        decoded = decode_all(raw_hps)
        user, framework, reserved = split(decoded)
        self._raw_hyperparameters = raw_hps
        self._hyperparameters = Hyperparameters(user, {k: raw_hps[k] for k in user})
        self._framework_params = framework
        self._reserved = reserved

        self._input_data_config, self._channels = config.read_input_data_config(paths.input_data_config_file)
        self._resource: ResourceConfig = config.read_resource_config(paths.resource_config_file)
        self._checkpoint = config.read_checkpoint_config(paths.checkpoint_config_file, paths.checkpoints_dir)

        self._log_level = _log_level(reserved.get("sagemaker_container_log_level", _INFO))
        program = self._environ.get("SAGEMAKER_PROGRAM")
        hp_program = reserved.get("sagemaker_program")
        if hp_program is not None and not isinstance(hp_program, str):
            raise ConfigError(
                "hyperparameters.json",
                "sagemaker_program",
                "a file name (a JSON string)",
                describe(hp_program),
            )
        self._user_entry_point: str | None = program or hp_program
        self._module_name = program if program is not None else str(hp_program)
        submit = reserved.get("sagemaker_submit_directory", paths.code_dir)
        self._module_dir = str(submit)

        self._argv_format = self._compute_argv_format()
        self._distribution_instance_groups = self._compute_distribution_groups()
        self._distribution_hosts = self._compute_distribution_hosts()
        self._num_gpus: int | None = None
        self._num_cpus: int | None = None
        self._num_neurons: int | None = None

    # -- the Mapping protocol --------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key not in MAPPING_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(MAPPING_KEYS)

    def __len__(self) -> int:
        return len(MAPPING_KEYS)

    def __repr__(self) -> str:
        return f"Environment(root={self.paths.root!r}, current_host={self.current_host!r})"

    # -- derived values ------------------------------------------------------------------

    def _compute_argv_format(self) -> ArgvFormat:
        # The hyperparameter (per job) wins over the variable (per image); empty means unset.
        if "smtk_argv_format" in self._reserved:
            source, key, value = (
                "hyperparameters.json",
                "smtk_argv_format",
                self._reserved["smtk_argv_format"],
            )
        else:
            source, key, value = ("environment", "SMTK_ARGV_FORMAT", self.settings.argv_format or "compat")
        if value == "json":
            return "json"
        if value == "compat":
            return "compat"
        raise ConfigError(source, key, "'compat' or 'json'", describe(value))

    def _compute_distribution_groups(self) -> list[Any]:
        if "sagemaker_distribution_instance_groups" in self._framework_params:
            groups = self._framework_params["sagemaker_distribution_instance_groups"]
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise ConfigError(
                    "hyperparameters.json",
                    "sagemaker_distribution_instance_groups",
                    "a JSON list of instance group names",
                    describe(groups),
                )
            return list(groups)
        if any(self._framework_params.get(flag, False) for flag in DISTRIBUTION_FLAGS):
            return [self._resource.current_group_name]
        return []

    def _compute_distribution_hosts(self) -> list[str]:
        if not self._resource.instance_groups:
            return list(self._resource.hosts)  # "local mode" in the reference
        hosts: list[str] = []
        for group in self._resource.instance_groups:
            if group.name in self._distribution_instance_groups:
                hosts.extend(group.hosts)
        return hosts

    # -- the reference's properties ------------------------------------------------------

    @property
    def additional_framework_parameters(self) -> dict[str, Any]:
        """``sagemaker_*`` (and ``smtk_*``) hyperparameters that are not reserved."""
        return self._framework_params

    @property
    def channel_input_dirs(self) -> dict[str, str]:
        return {name: self.paths.channel_dir(name) for name in self._input_data_config}

    @property
    def current_host(self) -> str:
        return self._resource.current_host

    @property
    def current_instance_group(self) -> str:
        return self._resource.current_group_name

    @property
    def current_instance_group_hosts(self) -> list[str]:
        for group in self._resource.instance_groups:
            if group.name == self._resource.current_group_name:
                return list(group.hosts)
        return []

    @property
    def current_instance_type(self) -> str:
        return self._resource.current_instance_type

    @property
    def distribution_hosts(self) -> list[str]:
        return list(self._distribution_hosts)

    @property
    def distribution_instance_groups(self) -> list[Any]:
        return list(self._distribution_instance_groups)

    @property
    def framework_module(self) -> str | None:
        # Set but empty stays "" (not None), as in the reference's SM_TRAINING_ENV.
        return self._environ.get("SAGEMAKER_TRAINING_MODULE")

    @property
    def hosts(self) -> list[str]:
        return list(self._resource.hosts)

    @property
    def hyperparameters(self) -> Hyperparameters:
        return self._hyperparameters

    @property
    def input_config_dir(self) -> str:
        return self.paths.input_config_dir

    @property
    def input_data_config(self) -> dict[str, Any]:
        return self._input_data_config

    @property
    def input_dir(self) -> str:
        return self.paths.input_dir

    @property
    def instance_groups(self) -> list[str]:
        return [group.name for group in self._resource.instance_groups]

    @property
    def instance_groups_dict(self) -> dict[str, Any]:
        raw_groups = self._resource.raw.get("instance_groups", [])
        return {group["instance_group_name"]: group for group in raw_groups}

    @property
    def is_hetero(self) -> bool:
        return len(self._resource.instance_groups) > 1

    @property
    def is_master(self) -> bool:
        return self.current_host == self.master_hostname

    @property
    def is_modelparallel_enabled(self) -> Any:
        mp = self._environ.get("SM_HP_MP_PARAMETERS")
        return mp and mp != "{}"

    @property
    def is_smddpmprun_installed(self) -> bool:
        return _which("smddpmprun", self._environ.get("PATH"))

    @property
    def is_smddprun_installed(self) -> bool:
        return _which("smddprun", self._environ.get("PATH"))

    @property
    def job_name(self) -> str | None:
        return self._environ.get("TRAINING_JOB_NAME")

    @property
    def log_level(self) -> int:
        return self._log_level

    @property
    def master_hostname(self) -> str:
        return self._distribution_hosts[0] if self._distribution_hosts else self._resource.hosts[0]

    @property
    def model_dir(self) -> str:
        return self.paths.model_dir

    @property
    def module_dir(self) -> str:
        return self._module_dir

    @property
    def module_name(self) -> str:
        name = self._module_name
        return name[:-3] if name.endswith(".py") else name

    @property
    def network_interface_name(self) -> str:
        return self._resource.network_interface_name

    @property
    def num_cpus(self) -> int:
        if self._num_cpus is None:
            self._num_cpus = hardware.cpu_count()
        return self._num_cpus

    @property
    def num_gpus(self) -> int:
        if self._num_gpus is None:
            self._num_gpus = hardware.gpu_count(self._environ)
        return self._num_gpus

    @property
    def num_neurons(self) -> int:
        if self._num_neurons is None:
            self._num_neurons = hardware.neuron_count(self.current_instance_type)
        return self._num_neurons

    @property
    def output_data_dir(self) -> str:
        return self.paths.output_data_dir

    @property
    def output_dir(self) -> str:
        return self.paths.output_dir

    @property
    def output_intermediate_dir(self) -> str:
        return self.paths.output_intermediate_dir

    @property
    def resource_config(self) -> dict[str, Any]:
        return dict(self._resource.raw)

    @property
    def topology(self) -> list[Any]:
        return list(self._resource.topology)

    @property
    def user_entry_point(self) -> str | None:
        return self._user_entry_point

    # -- smtk additions (not part of the mapping) ------------------------------------

    @property
    def resource(self) -> ResourceConfig:
        """The typed ``resourceconfig.json``."""
        return self._resource

    @property
    def channel_configs(self) -> dict[str, ChannelConfig]:
        """The typed ``inputdataconfig.json`` entries, by channel name."""
        return dict(self._channels)

    @property
    def channels(self) -> ChannelMap:
        """Readable channels by name (see :mod:`smtk.channels`)."""
        return ChannelMap(self._channels, self.paths, self._environ)

    @property
    def checkpoint_config(self) -> CheckpointConfig | None:
        """``checkpointconfig.json``, or ``None`` when the platform gave none."""
        return self._checkpoint

    @property
    def reserved_hyperparameters(self) -> dict[str, Any]:
        """Every decoded ``sagemaker_*``/``smtk_*``/reserved hyperparameter."""
        return dict(self._reserved)

    @property
    def raw_hyperparameters(self) -> dict[str, Any]:
        """``hyperparameters.json`` as stored, every key included."""
        return dict(self._raw_hyperparameters)

    @property
    def environ(self) -> dict[str, str]:
        """The process environment this snapshot was built from (a copy)."""
        return dict(self._environ)

    @property
    def job_name_or_default(self) -> str:
        """``TRAINING_JOB_NAME``, else ``sagemaker_job_name``, else ``""``."""
        name = self.job_name or self._reserved.get("sagemaker_job_name") or ""
        return str(name)

    @property
    def region(self) -> str | None:
        """``AWS_REGION``, ``SAGEMAKER_REGION`` or the ``sagemaker_region`` hyperparameter."""
        for value in (
            self._environ.get("AWS_REGION"),
            self._environ.get("SAGEMAKER_REGION"),
            self._reserved.get("sagemaker_region"),
        ):
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def s3_output(self) -> str | None:
        """The ``sagemaker_s3_output`` hyperparameter (intermediate-output sync target)."""
        value = self._reserved.get("sagemaker_s3_output")
        return str(value) if value else None

    @property
    def argv_format(self) -> ArgvFormat:
        """``compat`` (default) or ``json``: from ``smtk_argv_format`` or ``SMTK_ARGV_FORMAT``."""
        return self._argv_format

    @property
    def distribution_enabled(self) -> bool:
        """Whether this host's group is one of the distribution groups."""
        return self._resource.current_group_name in self._distribution_instance_groups

    # -- rendering ----------------------------------------------------------------------

    def to_cmd_args(self, argv_format: ArgvFormat | None = None) -> list[str]:
        """The user's hyperparameters as argv (the reference's rendering unless opted out)."""
        return to_cmd_args(self._hyperparameters, argv_format or self.argv_format)

    def to_env_vars(self) -> dict[str, str]:
        """The ``SM_*`` variables the reference exports for this job, byte for byte."""
        values: dict[str, Any] = {
            "hosts": self.hosts,
            "network_interface_name": self.network_interface_name,
            "hps": self.hyperparameters,
            "user_entry_point": self.user_entry_point,
            "framework_params": self.additional_framework_parameters,
            "resource_config": self.resource_config,
            "input_data_config": self.input_data_config,
            "output_data_dir": self.output_data_dir,
            "channels": sorted(self.channel_input_dirs),
            "current_host": self.current_host,
            "current_instance_type": self.current_instance_type,
            "current_instance_group": self.current_instance_group,
            "current_instance_group_hosts": self.current_instance_group_hosts,
            "instance_groups": self.instance_groups,
            "instance_groups_dict": self.instance_groups_dict,
            "distribution_instance_groups": self.distribution_instance_groups,
            "is_hetero": self.is_hetero,
            "module_name": self.module_name,
            "log_level": self.log_level,
            "framework_module": self.framework_module,
            "input_dir": self.input_dir,
            "input_config_dir": self.input_config_dir,
            "output_dir": self.output_dir,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": self.num_neurons,
            "model_dir": self.model_dir,
            "module_dir": self.module_dir,
            "training_env": dict(self),
            "user_args": self.to_cmd_args(),
            "output_intermediate_dir": self.output_intermediate_dir,
        }
        if self.topology:
            values["topology"] = self.topology
        result = to_env_vars(values)
        result.update(to_env_vars(self.channel_input_dirs, prefix="SM_CHANNEL_"))
        result.update(to_env_vars(self.hyperparameters, prefix="SM_HP_"))
        return result


def _log_level(value: Any) -> int:
    """``sagemaker_container_log_level`` as a number: ``20``, ``"20"`` or a name (``"DEBUG"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        if text.upper() in _LEVEL_NAMES:
            return _LEVEL_NAMES[text.upper()]
    raise ConfigError(
        "hyperparameters.json",
        "sagemaker_container_log_level",
        "a logging level (10, 20, ... or DEBUG, INFO, ...)",
        describe(value),
    )


def _which(name: str, path: str | None) -> bool:
    """Whether ``name`` is an executable on ``path`` (``which``, without importing shutil)."""
    for directory in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return True
    return False
