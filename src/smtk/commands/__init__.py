"""One module per ``smtk`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
