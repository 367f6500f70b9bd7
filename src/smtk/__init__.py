"""smtk: run SageMaker-style training jobs inside a container, and read them from user code.

``import smtk`` is cheap and has no side effects: nothing is read, created or spawned
until you ask for it. The public face::

    import smtk
    env = smtk.Environment()            # the job, as SageMaker's toolkit presents it
    env.hyperparameters.get_int("epochs", 10)
    for record in env.channels["train"].records("recordio"): ...
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: `typing` (and the `re` it imports) would be most of the cost of
# `import smtk`, which the console scripts pay before they can install their stop handler.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = ["ConfigError", "Environment", "SmtkError", "__version__", "log_metric", "metric_definition"]

if TYPE_CHECKING:
    from smtk.environment import Environment
    from smtk.errors import ConfigError, SmtkError
    from smtk.metrics import log_metric, metric_definition

#: Where each public name lives: loaded on first use (PEP 562), so that ``import smtk`` is
#: one small module and a console script can install its stop before anything else loads.
_LAZY = {
    "Environment": "smtk.environment",
    "ConfigError": "smtk.errors",
    "SmtkError": "smtk.errors",
    "log_metric": "smtk.metrics",
    "metric_definition": "smtk.metrics",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smtk' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
