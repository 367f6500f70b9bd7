"""The ``/opt/ml`` tree as one immutable value.

::

    <root>/                       /opt/ml, or $SAGEMAKER_BASE_DIR
    ├── code/                     the user's code (cwd of the user process)
    ├── checkpoints/              default local checkpoint dir
    ├── input/
    │   ├── config/               hyperparameters.json, inputdataconfig.json,
    │   │                         resourceconfig.json, checkpointconfig.json
    │   └── data/<channel>        a directory (File/FastFile) or FIFOs <channel>_<epoch> (Pipe)
    ├── model/                    model artefacts
    └── output/
        ├── data/                 other outputs
        ├── intermediate/         synced to S3 while training runs
        ├── success | failure     the outcome (failure.json: the full record)

Paths are plain strings joined with :func:`os.path.join`, so every value is
byte-for-byte what the reference toolkit exports (``SM_MODEL_DIR`` and friends). The
root is made absolute once (:meth:`Paths.at`), so the paths stay right in the user's
process, which runs in the code dir. Building a :class:`Paths` touches nothing on disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

DEFAULT_ROOT = "/opt/ml"
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"


class Paths(NamedTuple):
    """Every well-known location of one job tree, derived from its root (an immutable value)."""

    root: str = DEFAULT_ROOT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Paths:
        """The tree named by ``$SAGEMAKER_BASE_DIR``, else ``/opt/ml`` (made absolute)."""
        env = os.environ if environ is None else environ
        return cls.at(env.get(BASE_DIR_ENV) or DEFAULT_ROOT)

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Paths:
        """The tree at ``root``, resolved once to an absolute path.

        The user's process runs in the code dir, so a relative root
        (``SAGEMAKER_BASE_DIR=job``) would make every ``SM_*`` path point nowhere.
        """
        return cls(os.path.abspath(os.fspath(root)))

    def _join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def code_dir(self) -> str:
        return self._join("code")

    @property
    def model_dir(self) -> str:
        return self._join("model")

    @property
    def checkpoints_dir(self) -> str:
        return self._join("checkpoints")

    @property
    def input_dir(self) -> str:
        return self._join("input")

    @property
    def input_config_dir(self) -> str:
        return self._join("input", "config")

    @property
    def input_data_dir(self) -> str:
        return self._join("input", "data")

    @property
    def output_dir(self) -> str:
        return self._join("output")

    @property
    def output_data_dir(self) -> str:
        return self._join("output", "data")

    @property
    def output_intermediate_dir(self) -> str:
        return self._join("output", "intermediate")

    @property
    def hyperparameters_file(self) -> str:
        return self._join("input", "config", "hyperparameters.json")

    @property
    def input_data_config_file(self) -> str:
        return self._join("input", "config", "inputdataconfig.json")

    @property
    def resource_config_file(self) -> str:
        return self._join("input", "config", "resourceconfig.json")

    @property
    def checkpoint_config_file(self) -> str:
        return self._join("input", "config", "checkpointconfig.json")

    @property
    def success_file(self) -> str:
        return self._join("output", "success")

    @property
    def failure_file(self) -> str:
        return self._join("output", "failure")

    @property
    def failure_json_file(self) -> str:
        return self._join("output", "failure.json")

    def channel_dir(self, channel: str) -> str:
        """``input/data/<channel>``: the directory (File) or FIFO prefix (Pipe) of a channel."""
        return self._join("input", "data", channel)
