"""``entry_point.run``: run the user's entry point the way smtk runs it.

The call framework toolkits make::

    entry_point.run(uri=env.module_dir, user_entry_point=env.user_entry_point,
                    args=env.to_cmd_args(), env_vars=env.to_env_vars(),
                    capture_error=True, runner_type=runner_type)

resolves and validates the entry point with smtk's rules, runs it under smtk's
supervisor (see :mod:`sagemaker_training.runner` for which launcher), and on failure
raises :class:`~sagemaker_training.errors.ExecuteUserScriptError` whose message is smtk's
root cause (``ValueError: bad shape at train.py:42``), never the raw stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sagemaker_training import _launch, runner
from smtk import install as smtk_install
from smtk.entry_point import resolve_program
from smtk.environment import Environment
from smtk.errors import SmtkError


def run(
    uri: str | None,
    user_entry_point: str,
    args: Sequence[str],
    env_vars: Mapping[str, str] | None = None,
    wait: bool = True,
    capture_error: bool = False,
    runner_type: runner.RunnerType | runner.Runner = runner.ProcessRunnerType,
    extra_opts: Mapping[str, Any] | None = None,
) -> Any:
    """Run ``user_entry_point`` (a ``.py`` script, a package or a command in the code dir).

    ``uri`` is fetched into the code dir first when smtk's ``train`` did not already do
    it. Returns a ``subprocess.CompletedProcess`` when the entry point succeeded, or,
    with ``wait=False``, the started ``subprocess.Popen`` (not supervised: the caller
    owns it). ``extra_opts`` (the reference's MPI options) are not used: smtk reads the
    MPI options from the hyperparameters.
    """
    chosen = runner.get(runner_type, user_entry_point, list(args), dict(env_vars or {}), extra_opts)
    return _launch.launch(
        chosen.runner_type.value,
        chosen.user_entry_point,
        chosen.args,
        chosen.env_vars,
        wait=wait,
        capture_error=capture_error,
        uri=uri,
    )


def install(name: str, path: str | None = None, capture_error: bool = False) -> None:
    """Validate entry point ``name`` in ``path`` (the code dir) and install its dependencies.

    Like the reference, ``path`` is put first on ``sys.path``. Installs follow smtk's rule:
    ``requirements.txt`` for every kind of entry point, ``pip install .`` for a package.
    """
    env = Environment()
    code_dir = path or env.paths.code_dir
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    try:
        smtk_install.install_requirements(env, resolve_program(name, code_dir))
    except SmtkError as exc:
        raise _launch.client_error(exc) from None
