"""``python -m smtk``: the same as the ``smtk`` command."""

from smtk.cli import smtk_console

smtk_console()
