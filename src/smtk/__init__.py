"""smtk: run SageMaker-style training jobs inside a container, and read them from user code.

``import smtk`` is cheap and has no side effects: nothing is read, created or spawned
until you ask for it. The public face::

    import smtk
    env = smtk.Environment()            # the job, as SageMaker's toolkit presents it
    env.hyperparameters.get_int("epochs", 10)
    for record in env.channels["train"].records("recordio"): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ConfigError", "Environment", "SmtkError", "__version__"]

if TYPE_CHECKING:
    from smtk.environment import Environment
    from smtk.errors import ConfigError, SmtkError


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import smtk` to one small module.
    if name == "Environment":
        from smtk.environment import Environment

        return Environment
    if name in ("ConfigError", "SmtkError"):
        from smtk import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'smtk' has no attribute {name!r}")
