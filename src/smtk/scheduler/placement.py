"""Where this host sits in a job that a cluster scheduler (Slurm, Kubernetes) started.

Each scheduler module turns its own variables into one :class:`Placement`; the
bootstrap (:mod:`smtk.scheduler.bootstrap`) lays out this host's job tree from it, so
``train`` then runs exactly as on SageMaker: ``hosts`` becomes ``SM_HOSTS``,
``current_host`` becomes ``SM_CURRENT_HOST`` and the master is ``hosts[0]``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Where this host sits in a job that a cluster scheduler started."""

    scheduler: str  # "slurm", "kubeflow-trainer", "pytorchjob", "jobset", "indexed-job"
    hosts: tuple[str, ...]  # every host's name in node-rank order; each resolvable from every host
    current_host: str  # this host's entry in hosts
    gpus: int | None = None  # GPUs the scheduler gave this host (None: smtk detects them as usual)
    job_name: str | None = None  # the scheduler's job name or id (the default job name)

    @property
    def master(self) -> str:
        """The first host: torchrun's rendezvous and the status channel live there."""
        return self.hosts[0]

    @property
    def index(self) -> int:
        """This host's position in :attr:`hosts` (its node rank)."""
        return self.hosts.index(self.current_host)
