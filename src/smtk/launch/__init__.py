"""Launch plans (pure builders) and the one module that runs them (:mod:`smtk.launch.process`)."""
