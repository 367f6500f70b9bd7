"""Importing the user's code as a module (``modules.import_module``) and installing its dependencies."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from sagemaker_training import _launch, errors
from smtk import codefetch
from smtk import install as smtk_install
from smtk.environment import Environment
from smtk.errors import SmtkError
from smtk.install import REQUIREMENTS

DEFAULT_MODULE_NAME = "default_user_module_name"
CA_REPOSITORY_ARN_ENV = "CA_REPOSITORY_ARN"


def exists(name: str) -> bool:
    """Whether module ``name`` can be imported."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def has_requirements(path: str) -> bool:
    """Whether ``path`` has a ``requirements.txt``."""
    return os.path.exists(os.path.join(path, REQUIREMENTS))


def install_requirements(path: str, capture_error: bool = False) -> None:
    """``pip install -r requirements.txt`` in ``path``, with smtk's installer (``SMTK_PIP_ARGS``, masking)."""
    env = Environment()
    try:
        smtk_install.run_pip(
            [sys.executable, "-m", "pip", "install", *env.settings.pip_args, "-r", REQUIREMENTS],
            path,
            env.environ,
            "requirements",
        )
    except SmtkError as exc:
        raise _launch.client_error(exc) from None


def install(path: str, capture_error: bool = False) -> None:
    """``pip install .`` (and ``-r requirements.txt`` when there is one) in ``path``."""
    env = Environment()
    target = ["."] + (["-r", REQUIREMENTS] if has_requirements(path) else [])
    try:
        smtk_install.run_pip(
            [sys.executable, "-m", "pip", "install", *env.settings.pip_args, *target],
            path,
            env.environ,
            "package",
        )
    except SmtkError as exc:
        raise _launch.client_error(exc) from None


def import_module(uri: str | None, name: str = DEFAULT_MODULE_NAME) -> ModuleType:
    """Fetch ``uri`` into the code dir (unless smtk's ``train`` did), install its requirements,
    and import ``name`` from it.

    Unlike the reference, no ``setup.py`` is generated and nothing is ``pip install``-ed:
    the code dir goes first on ``sys.path``. An error while importing the user's module is
    an :class:`~sagemaker_training.errors.ImportModuleError`, chained to the original.
    """
    env = Environment()
    code_dir = env.paths.code_dir
    try:
        if uri and _launch.LAUNCHED_MARK not in os.environ and os.path.abspath(uri) != code_dir:
            codefetch.fetch(
                uri, code_dir, env.environ, codefetch.Limits.from_settings(env.settings), s3=env.settings.s3
            )
        if has_requirements(code_dir) and _launch.LAUNCHED_MARK not in os.environ:
            install_requirements(code_dir)
    except SmtkError as exc:
        raise _launch.client_error(exc) from None
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    try:
        module = importlib.import_module(name)
        return importlib.reload(module)
    except Exception as exc:
        raise errors.ImportModuleError(exc) from exc
