"""Launch plans: pure builders of the ``LaunchPlan`` that :mod:`smtk.supervisor` runs."""
