"""Syncing ``output/intermediate`` to S3: smtk's ``train`` does it (:mod:`smtk.sync`).

Under smtk's ``train`` the sync already runs for the whole job when
``sagemaker_s3_output`` is set (with the reference's rule: only when the directory did
not exist at start), so ``start_sync`` has nothing to start. Outside ``train`` it starts
smtk's sync for this job (inotify including renames, retries, a bounded flush).
"""

from __future__ import annotations

import os

from sagemaker_training import _launch, errors, logging_config
from smtk.environment import Environment
from smtk.errors import SmtkError
from smtk.sync import SyncHandle
from smtk.sync import start_sync as start_job_sync


def start_sync(
    s3_output_location: str | None, region: str | None, endpoint_url: str | None = None
) -> SyncHandle | None:
    """Start syncing ``output/intermediate`` to ``s3_output_location``; ``None`` if nothing to start.

    ``region`` and ``endpoint_url`` come from the job's environment in smtk
    (``AWS_REGION``/``sagemaker_region``, ``AWS_ENDPOINT_URL_S3``). Call ``.stop()`` on
    the handle before the process ends, to flush.
    """
    logger = logging_config.get_logger()
    if not s3_output_location:
        return None
    if _launch.LAUNCHED_MARK in os.environ:
        logger.debug("intermediate output: smtk's train syncs output/intermediate for this job")
        return None
    env = Environment()
    if env.s3_output != s3_output_location:
        raise errors.ClientError(
            f"intermediate_output.start_sync({s3_output_location!r}): smtk syncs to the job's "
            f"sagemaker_s3_output hyperparameter, which is {env.s3_output!r}"
        )
    try:
        return start_job_sync(env)
    except SmtkError as exc:
        raise _launch.client_error(exc) from None
