"""Who must be ready before a launch plan runs, and the wait for them.

Before a plan with more than one host runs, :func:`wait_for_peers` marks this host ready
on the job's status channel (it has fetched its code, installed its requirements and
built its plan) and waits for the peers it needs::

    torchrun, master   <── every member's "ready" on the channel; their names resolve
    torchrun, members  ──> the master's "ready" (its train passed its own preparation)
    MPI, master        <── every worker's "ready" (its sshd is up); its sshd accepts
    MPI, workers       ──> (nothing here: smtk.launch.worker waits for the master)

On timeout :class:`~smtk.errors.ClusterError` (exit status 4) names every host that never
became ready and what failed (DNS, connect, still preparing). A host that failed
meanwhile ends the wait at once, naming it; so does a stop. There are no fixed sleeps: a
peer that is already up costs one connect.

::

    readiness.wait_for_peers(env, plan, session, stop)   # ClusterError naming the laggards
"""

from __future__ import annotations

import logging

from smtk.cluster.probe import Peer, wait_for
from smtk.cluster.session import Session
from smtk.environment import Environment
from smtk.launch.plan import LaunchPlan
from smtk.stop import Stop

logger = logging.getLogger("smtk")


def peers_for(env: Environment, plan: LaunchPlan) -> list[Peer]:
    """What this host waits for before running ``plan`` (see the module docstring).

    On the master these are probed besides every member's "ready" on the status
    channel; a torchrun member's one peer is the master's status port, where its
    connection waits for the master's "ready".
    """
    others = [h for h in plan.hosts if h != env.current_host]
    if not others or plan.kind in ("process", "function", "mpi-worker"):
        return []
    settings = env.settings
    master = env.master_hostname
    if plan.kind == "mpi":
        return [Peer(h, settings.ssh_port, "sshd") for h in others]
    if env.current_host == master:
        # Members connect to us: what we check ourselves is that their names resolve.
        return [Peer(h, None, "train ready") for h in others]
    return [Peer(master, settings.status_port, "smtk status")]


def wait_for_peers(env: Environment, plan: LaunchPlan, session: Session | None, stop: Stop) -> None:
    """Block until the peers ``plan`` needs are ready; :class:`ClusterError` on timeout or
    as soon as any host of the job has failed (naming it), :class:`Stopped` on a stop."""
    if len(plan.hosts) <= 1 or plan.kind not in ("torchrun", "mpi"):
        return
    timeout = env.settings.ready_timeout
    probes = peers_for(env, plan)
    if session is None:  # not a multi-host distributed job after all: probes only
        wait_for(probes, env.settings, timeout, who=env.current_host, stop=stop)
        return
    shown = ", ".join(p.describe() for p in probes[:10]) + (
        f", ... ({len(probes)} in all)" if len(probes) > 10 else ""
    )
    logger.info("%s: waiting up to %.0f s for %s", env.current_host, timeout, shown or "nobody")
    session.mark_ready()
    session.wait_ready(probes if session.is_master else [], timeout)
