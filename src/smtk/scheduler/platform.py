"""Is this SageMaker? The check ``train`` makes first, costing two ``stat`` calls at most.

Only the standard library and modules ``train`` imports anyway: the platform's start-up
pays nothing for the schedulers (:mod:`smtk.scheduler.detect` decides among those, and is
imported only when this says no).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from smtk.errors import ConfigError
from smtk.paths import BASE_DIR_ENV, DEFAULT_ROOT
from smtk.settings import scheduler_setting

#: Written by the bootstrap into each tree it lays out: such a tree is not the platform's
#: (a later job on the same node lays it out again instead of rerunning it).
MARKER = ".smtk-scheduler-job"


def platform_tree(environ: Mapping[str, str]) -> bool:
    """Whether ``resourceconfig.json`` is there and was not written by smtk's bootstrap."""
    root = environ.get(BASE_DIR_ENV) or DEFAULT_ROOT
    if not os.path.exists(os.path.join(root, "input", "config", "resourceconfig.json")):
        return False
    return not os.path.exists(os.path.join(root, MARKER))


def on_sagemaker(environ: Mapping[str, str]) -> bool:
    """``SMTK_SCHEDULER=sagemaker``, or ``auto`` (the default) with the platform's tree there.

    A bad ``SMTK_SCHEDULER`` counts as SageMaker: ``train`` checks every setting first and
    reports it (exit status 2).
    """
    try:
        chosen = scheduler_setting(environ)
    except ConfigError:
        return True
    if chosen == "auto":
        return platform_tree(environ)
    return chosen == "sagemaker"
