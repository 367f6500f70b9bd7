"""smtk local: run jobs on this machine (processes, several hosts, or a container image)."""
