"""The toolkit's logger, and the one-line record of a script invocation.

``log_script_invocation`` logs the command (masked) and the names of the variables the
script gets, never their values: smtk does not dump the environment into the log (the
reference logs every ``SM_*`` value and all hyperparameters).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from smtk import log

LOGGER_NAME = "sagemaker-training-toolkit"


def get_logger() -> logging.Logger:
    """The ``sagemaker-training-toolkit`` logger."""
    return logging.getLogger(LOGGER_NAME)


def configure_logger(
    level: int, log_format: str = "%(asctime)s %(name)-12s %(levelname)-8s %(message)s"
) -> None:
    """``logging.basicConfig`` at ``level``; quiets boto3's loggers down to ``level`` too."""
    logging.basicConfig(format=log_format, level=level)
    if level >= logging.INFO:
        for name in ("boto3", "s3transfer", "botocore"):
            logging.getLogger(name).setLevel(level)


def log_script_invocation(
    cmd: str | Sequence[str], env_vars: Mapping[str, str], logger: logging.Logger | None = None
) -> None:
    """Log ``Invoking script with the following command:`` and the command, masked."""
    shown = cmd if isinstance(cmd, str) else " ".join(cmd)
    (logger or get_logger()).info(
        "Invoking script with the following command:\n\n%s\n\n(with %d variables set: %s)",
        log.masker().mask(shown),
        len(env_vars),
        ", ".join(sorted(env_vars)),
    )
