"""Running the same job outside SageMaker: on Slurm and on Kubernetes.

When ``train`` finds no platform tree (``resourceconfig.json`` under ``/opt/ml`` or
``$SAGEMAKER_BASE_DIR``), :mod:`smtk.scheduler.detect` asks the schedulers it knows
whether they started this process; the one that did gives a
:class:`~smtk.scheduler.placement.Placement` (hosts, this host, GPUs, job name), and
:mod:`smtk.scheduler.bootstrap` lays out this host's tree from the job spec
(``SMTK_JOB_SPEC``) and runs the job through ``train``'s usual flow.

::

    placement.py   Placement: hosts in node-rank order, this host, GPUs, job name
    hostlist.py    Slurm's host list expressions (tux[01-12],rack[0-1]_blade[0-3])
    slurm.py       Slurm's variables -> Placement
    kubernetes.py  the Kubernetes operators' variables -> Placement
    platform.py    is this SageMaker? (train's first check, two stat calls)
    detect.py      else which scheduler started this process (SMTK_SCHEDULER overrides)
    bootstrap.py   spec + Placement -> this host's tree -> train -> artifacts
"""
