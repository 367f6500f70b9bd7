"""What the torchrun and MPI plan builders share: flags, ranks per host, the rank command.

Every rank of a distributed plan runs through the rank wrapper
(:mod:`smtk.launch.rank`), which gives it its own host's identity and prefixes its
output lines with ``host:rank``::

    <python> -m smtk.launch.rank -- <the entry point's argv> <user args>
"""

from __future__ import annotations

import sys
from typing import Any

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.launch.plain import entry_argv

SOURCE = "hyperparameters.json"
PPN_KEY = "sagemaker_mpi_num_of_processes_per_host"


def flag(env: Environment, key: str) -> bool:
    """A framework flag: JSON ``true``, or the strings ``"true"``/``"1"``/``"yes"``."""
    value: Any = env.additional_framework_parameters.get(key, False)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def positive_int(env: Environment, key: str) -> int | None:
    """A framework parameter that must be a positive integer, or ``None`` when absent."""
    params = env.additional_framework_parameters
    if key not in params or params[key] in (None, ""):
        return None
    value = params[key]
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise ConfigError(SOURCE, key, "a positive integer", value)
    return number


def processes_per_host(env: Environment) -> int:
    """``sagemaker_mpi_num_of_processes_per_host``, else visible GPUs, else Neuron cores, else 1."""
    override = positive_int(env, PPN_KEY)
    if override is not None:
        return override
    if env.num_gpus > 0:
        return env.num_gpus
    if env.num_neurons > 0:
        return env.num_neurons
    return 1


def user_command(env: Environment, entry: EntryPoint, python: str) -> list[str]:
    """The entry point with the user's arguments (none for a function entry point)."""
    args = [] if entry.kind == "function" else env.to_cmd_args()
    return [*entry_argv(entry, python), *args]


def rank_command(command: list[str], python: str = sys.executable) -> list[str]:
    """``command`` run through the rank wrapper."""
    return [python, "-m", "smtk.launch.rank", "--", *command]


def node_rank(env: Environment, hosts: tuple[str, ...]) -> int:
    """This host's index among the hosts taking part."""
    try:
        return hosts.index(env.current_host)
    except ValueError:
        raise ConfigError(
            "resourceconfig.json",
            "current_host",
            f"one of the distribution hosts {list(hosts)}",
            env.current_host,
        ) from None
