"""Where ``train`` runs: SageMaker, Slurm or Kubernetes.

In this order:

1. ``SMTK_SCHEDULER`` when set to ``sagemaker``, ``slurm`` or ``kubernetes`` (``auto``,
   the default, detects);
2. **SageMaker** when the platform's tree is there: ``input/config/resourceconfig.json``
   under ``$SAGEMAKER_BASE_DIR`` (or ``/opt/ml``) that smtk's bootstrap did not write
   (:mod:`smtk.scheduler.platform`: ``train`` checks this first, for two ``stat`` calls,
   and imports this module only when it says no);
3. **Slurm** when Slurm's variables are set (:func:`smtk.scheduler.slurm.detected`);
4. **Kubernetes** when an operator's variables are set
   (:func:`smtk.scheduler.kubernetes.detected`);
5. otherwise SageMaker: ``train`` reads the tree as it always did (and reports what is
   missing there).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from smtk.scheduler import kubernetes, slurm
from smtk.scheduler.placement import Placement
from smtk.scheduler.platform import MARKER, on_sagemaker, platform_tree
from smtk.settings import scheduler_setting

__all__ = ["KUBERNETES", "MARKER", "SAGEMAKER", "SLURM", "placement", "platform_tree", "where"]

SAGEMAKER = "sagemaker"
SLURM = "slurm"
KUBERNETES = "kubernetes"


def where(environ: Mapping[str, str]) -> str:
    """``sagemaker``, ``slurm`` or ``kubernetes`` (``sagemaker`` for a bad ``SMTK_SCHEDULER``:
    ``train`` then reports it like any bad setting)."""
    if on_sagemaker(environ):
        return SAGEMAKER
    chosen = scheduler_setting(environ)
    if chosen != "auto":
        return chosen
    if slurm.detected(environ):
        return SLURM
    if kubernetes.detected(environ):
        return KUBERNETES
    return SAGEMAKER


def placement(scheduler: str, environ: Mapping[str, str], hostname: str | None = None) -> Placement:
    """This host's :class:`Placement` as ``scheduler`` (``slurm`` or ``kubernetes``) gives it."""
    host = hostname if hostname is not None else socket.gethostname()
    if scheduler == SLURM:
        return slurm.placement(environ, host)
    if scheduler == KUBERNETES:
        return kubernetes.placement(environ, host)
    raise ValueError(f"no placement for {scheduler!r}")
