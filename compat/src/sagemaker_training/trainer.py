"""``trainer.train()``: the ``train`` command, which is smtk's."""

from __future__ import annotations

from typing import NoReturn

from smtk.cli import train_console


def train() -> NoReturn:
    """Run the job in ``/opt/ml`` (or ``$SAGEMAKER_BASE_DIR``) and exit with its status."""
    train_console()
    raise SystemExit(0)  # train_console always exits; this keeps the NoReturn promise
