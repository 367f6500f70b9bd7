"""``Environment`` and the job's paths, read by :class:`smtk.Environment`.

``environment.Environment()`` *is* an :class:`smtk.Environment` (a subclass), so
``dict(env)``, ``env.to_env_vars()`` and ``env.to_cmd_args()`` are smtk's (byte for
byte the reference's ``SM_*`` set and argv) and it has smtk's additions
(``env.hyperparameters.get_int(...)``, ``env.channels``, ...). Unlike the reference,
building one writes nothing: no ``os.environ`` changes, no directories.

The module-level paths (``environment.code_dir``, ``model_dir``, ...) are computed when
first read, from ``$SAGEMAKER_BASE_DIR`` (else ``/opt/ml``), as smtk's ``Paths`` do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from sagemaker_training import errors
from smtk import config, hardware
from smtk.environment import Environment as SmtkEnvironment
from smtk.hyperparameters import decode_all
from smtk.paths import BASE_DIR_ENV, DEFAULT_ROOT, Paths

SAGEMAKER_BASE_PATH = DEFAULT_ROOT
BASE_PATH_ENV = BASE_DIR_ENV
HYPERPARAMETERS_FILE = "hyperparameters.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"

#: Module attributes computed on first access (PEP 562): ``name -> Paths -> value``.
_PATHS = {
    "base_dir": lambda p: p.root,
    "code_dir": lambda p: p.code_dir,
    "model_dir": lambda p: p.model_dir,
    "input_dir": lambda p: p.input_dir,
    "input_config_dir": lambda p: p.input_config_dir,
    "output_dir": lambda p: p.output_dir,
    "output_data_dir": lambda p: p.output_data_dir,
    "output_intermediate_dir": lambda p: p.output_intermediate_dir,
    "hyperparameters_file_dir": lambda p: p.hyperparameters_file,
    "input_data_config_file_dir": lambda p: p.input_data_config_file,
    "resource_config_file_dir": lambda p: p.resource_config_file,
}


def __getattr__(name: str) -> Any:
    if name in _PATHS:
        return _PATHS[name](_paths())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _paths() -> Paths:
    return Paths.from_environ(os.environ)


def read_hyperparameters() -> dict[str, Any]:
    """``hyperparameters.json``, every value decoded with ``json.loads`` when it parses."""
    return decode_all(config.read_hyperparameters(_paths().hyperparameters_file))


def read_resource_config() -> dict[str, Any]:
    """``resourceconfig.json`` (a one-host job on this machine when it is absent)."""
    return dict(Environment().resource_config)


def read_input_data_config() -> dict[str, Any]:
    """``inputdataconfig.json`` (``{}`` when it is absent)."""
    raw, _channels = config.read_input_data_config(_paths().input_data_config_file)
    return raw


def channel_path(channel: str) -> str:
    """``<base>/input/data/<channel>``."""
    return _paths().channel_dir(channel)


def num_gpus() -> int:
    """GPUs this process may use (``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` honoured)."""
    return hardware.gpu_count(os.environ)


def num_cpus() -> int:
    """CPUs this process may use (affinity and cgroup quota)."""
    return hardware.cpu_count()


def num_neurons(instance_type: str = "") -> int:
    """Neuron cores on this machine."""
    return hardware.neuron_count(instance_type)


def validate_smddprun() -> bool:
    """Whether ``smddprun`` is on ``PATH`` (smtk runs no SMDDP; see docs/migration.md)."""
    return Environment().is_smddprun_installed


def validate_smddpmprun() -> bool:
    """Whether ``smddpmprun`` is on ``PATH``."""
    return Environment().is_smddpmprun_installed


def write_env_vars(env_vars: Mapping[str, str] | None = None) -> None:
    """Write ``env_vars`` into ``os.environ``, and ``PYTHONPATH`` as ``sys.path`` (the reference's
    behaviour; asked for explicitly, so this is the one function here that changes ``os.environ``)."""
    values = dict(env_vars or {})
    values["PYTHONPATH"] = ":".join(sys.path)
    for name, value in values.items():
        os.environ[name] = value


class Environment(SmtkEnvironment):
    """The job, as ``sagemaker_training.environment.Environment`` presents it.

    The reference lets a caller pass ``resource_config``, ``input_data_config`` or
    ``hyperparameters`` instead of the files. smtk always reads the files; a value that
    differs from them is refused with a :class:`~sagemaker_training.errors.ClientError`
    naming it (a framework toolkit passes what it just read, which is accepted).
    """

    def __init__(
        self,
        resource_config: Mapping[str, Any] | None = None,
        input_data_config: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        given = {
            "resource_config": (resource_config, self.resource_config, RESOURCE_CONFIG_FILE),
            "input_data_config": (input_data_config, self.input_data_config, INPUT_DATA_CONFIG_FILE),
            "hyperparameters": (hyperparameters, decode_all(self.raw_hyperparameters), HYPERPARAMETERS_FILE),
        }
        for name, (value, on_disk, file_name) in given.items():
            if value is not None and dict(value) != on_disk:
                raise errors.ClientError(
                    f"Environment({name}=...) differs from {os.path.join(self.input_config_dir, file_name)}: "
                    f"smtk reads the job from its files only; write the values there (or pass what "
                    f"environment.read_{name}() returns)"
                )

    def sagemaker_s3_output(self) -> str | None:
        """The ``sagemaker_s3_output`` hyperparameter (where ``output/intermediate`` is synced)."""
        return self.s3_output
