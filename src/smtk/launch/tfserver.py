"""A TensorFlow parameter server: ``python -m smtk.launch.tfserver``, one per host of a
parameter-server job (:func:`smtk.launch.tensorflow.build_ps_plan`).

It does what the TensorFlow toolkit's ``_run_ps`` does in a forked child: a
``tf.distribute.Server`` for the ``ps`` job of the cluster, on the CPU only (several
TensorFlow processes sharing one GPU is not safe), serving until it is stopped. The
cluster and the task come from ``TF_CONFIG`` (``"task": {"type": "ps", "index": i}``).
It runs under the job's supervisor, so a stop reaches it and its failure is the job's.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from smtk import log

USAGE = "usage: python -m smtk.launch.tfserver   (the cluster and task come from TF_CONFIG)"


def task_of(environ: Mapping[str, str]) -> tuple[dict[str, Any], str, int]:
    """The cluster, job name and task index in ``TF_CONFIG``; :class:`ValueError` naming
    what is wrong."""
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError("TF_CONFIG is not set: the parameter server does not know its cluster")
    try:
        config = json.loads(text)
        cluster = config["cluster"]
        task = config["task"]
        job, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        expected = '{"cluster": {...}, "task": {"type": ..., "index": ...}}'
        raise ValueError(f"TF_CONFIG must be {expected}: {exc}") from None
    if not isinstance(cluster, dict) or job not in cluster:
        raise ValueError(f"TF_CONFIG's cluster has no {job!r} job: {text}")
    return cluster, job, index


def main(argv: Sequence[str] = ()) -> int:
    """Serve until stopped; 2 for a bad ``TF_CONFIG``, 1 when TensorFlow cannot start it."""
    if argv:
        log.write("stderr", USAGE)
        return 2
    try:
        cluster, job, index = task_of(os.environ)
    except ValueError as exc:
        log.write("stderr", f"ValueError: {exc}")
        return 2
    try:
        import tensorflow as tf
    except ImportError as exc:
        log.write("stderr", f"ModuleNotFoundError: parameter servers need TensorFlow in the image ({exc})")
        return 1
    no_gpu = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
    server = tf.distribute.Server(
        tf.train.ClusterSpec(cluster), job_name=job, task_index=index, config=no_gpu, start=True
    )
    log.write("stdout", f"parameter server {job}:{index} serving at {server.target}")
    server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
