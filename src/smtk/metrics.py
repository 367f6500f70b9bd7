"""Printing metrics from training code in a form MetricDefinitions find.

SageMaker (and ``smtk local``) read metrics from the job's output with the regular
expressions of ``MetricDefinitions``. :func:`log_metric` prints one metric per line in a
fixed form, and :func:`metric_definition` gives the definition that matches it, so the
two never drift apart::

    import smtk
    smtk.log_metric("train:loss", 0.25, step=3)     # prints: [metric] train:loss=0.25 step=3

    # in the job spec, or estimator.fit(metric_definitions=[...])
    smtk.metric_definition("train:loss")
    # {"Name": "train:loss", "Regex": "\\[metric\\] train:loss=([-+0-9.eE]+|nan|inf)"}
"""

from __future__ import annotations

import re

from smtk import log

PREFIX = "[metric]"


def log_metric(name: str, value: float, *, step: int | None = None) -> None:
    """Print ``[metric] NAME=VALUE[ step=N]`` on one line of stdout (through :mod:`smtk.log`)."""
    if not name or any(c.isspace() or c == "=" for c in name):
        raise ValueError(f"metric name {name!r}: expected no spaces and no '='")
    line = f"{PREFIX} {name}={float(value)!r}" + (f" step={int(step)}" if step is not None else "")
    log.write("stdout", line)


def metric_definition(name: str) -> dict[str, str]:
    """The ``MetricDefinitions`` entry that finds what :func:`log_metric` prints for ``name``."""
    return {"Name": name, "Regex": rf"{re.escape(PREFIX)} {re.escape(name)}=([-+0-9.eE]+|nan|inf)"}
