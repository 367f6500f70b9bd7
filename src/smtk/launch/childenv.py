"""The environment every launcher gives the user's processes.

It is what the reference exports (the ``SM_*`` set and ``PYTHONPATH`` starting with the
code dir), plus the variables the reference sets on its own ``os.environ`` that user
scripts have come to read (``CURRENT_HOST``, ``SAGEMAKER_JOB_NAME``,
``SAGEMAKER_REGION``), plus smtk's additions, all named ``SMTK_*``, and, for a plain process,
``TORCHELASTIC_ERROR_FILE`` (where torch's ``@record`` writes an escaping exception,
read back as the failure's root cause). The launcher's own
``os.environ`` is never modified: the plan carries these and the process module
merges them at spawn time.
"""

from __future__ import annotations

import os

from smtk.environment import Environment


def child_env(env: Environment, launcher: str) -> dict[str, str]:
    """Variables added to the inherited environment of the user's processes."""
    values = env.to_env_vars()
    inherited = env.environ.get("PYTHONPATH", "")
    code_dir = env.paths.code_dir
    values["PYTHONPATH"] = code_dir + (os.pathsep + inherited if inherited else "")
    values["CURRENT_HOST"] = env.current_host
    values["SAGEMAKER_JOB_NAME"] = str(env.reserved_hyperparameters.get("sagemaker_job_name") or "")
    region = env.reserved_hyperparameters.get("sagemaker_region") or env.environ.get("SAGEMAKER_REGION") or ""
    values["SAGEMAKER_REGION"] = str(region)
    # Line-by-line streaming only works if Python does not block-buffer the pipe.
    values.setdefault("PYTHONUNBUFFERED", env.environ.get("PYTHONUNBUFFERED", "1"))
    hosts = env.hosts
    values["SMTK_LAUNCHER"] = launcher
    values["SMTK_HOST_INDEX"] = str(hosts.index(env.current_host))
    values["SMTK_NUM_HOSTS"] = str(len(hosts))
    values["SMTK_MASTER_HOST"] = env.master_hostname
    if launcher not in ("torchrun", "mpi") and "TORCHELASTIC_ERROR_FILE" not in env.environ:
        # Where a script whose main is decorated with torch's @record leaves its exception:
        # the first source of the failure's root cause (smtk.causes).
        values["TORCHELASTIC_ERROR_FILE"] = os.path.join(env.paths.root, ".smtk", "error.json")
    return values
