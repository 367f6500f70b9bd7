"""``train``: run the job in ``/opt/ml`` from start to outcome.

The flow (DESIGN.md)::

    read      Environment()                      ConfigError -> exit 2
    prepare   restore checkpoints, start sync,   ArchiveError/EntryPointError -> 2
              fetch code, resolve entry point,   InstallError -> 3
              install requirements
    plan      launch.select.build_plan()         pure
    wait      cluster.wait_for_peers()           ClusterError -> 4 (multi-host only)
    run       launch.process.run()               streams logs, forwards SIGTERM/SIGINT
    report    report.finish()                    success | failure + failure.json, exit status

SIGTERM/SIGINT are recorded from the first instruction on; a stop that arrives before
the user's code starts skips the launch and is reported as stopped (128 + signal).
Side services (output/checkpoint sync) are always stopped, within a bounded time, before
the outcome is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smtk import log, report
from smtk.environment import Environment
from smtk.errors import ConfigError, SmtkError
from smtk.launch.plan import LaunchPlan
from smtk.launch.process import StopController, run
from smtk.paths import Paths
from smtk.redact import redact_argv, secret_values

if TYPE_CHECKING:
    from smtk.sync import SyncHandle

logger = logging.getLogger("smtk")

#: Seconds the platform gives between its SIGTERM and its SIGKILL.
PLATFORM_STOP_WINDOW = 120.0


class _Stopped(Exception):
    """A stop signal arrived before the user's code was started (``during``: doing what)."""

    def __init__(self, signum: int, during: str = "") -> None:
        super().__init__(signum)
        self.signum = signum
        self.during = during


def main(argv: Sequence[str] = ()) -> int:
    """Run the job; returns the exit status (CONTRACT.md section 6)."""
    stop = StopController().install()
    started = time.monotonic()
    log.configure()
    if argv and argv[0] in ("-h", "--help"):
        print("usage: train\n\nRun the training job described by /opt/ml (or $SAGEMAKER_BASE_DIR).")
        return 0
    paths = Paths.from_environ()
    try:
        env = Environment()
    except ConfigError as exc:
        logger.error("%s", exc)
        return report.finish(paths, report.from_error(exc, seconds=time.monotonic() - started))
    except Exception as exc:  # anything else is our bug: report it, never a bare traceback
        logger.exception("internal error while reading the job")
        return report.finish(paths, report.from_internal_error(exc))
    log.configure(env.log_level)
    secrets = secret_values(env.raw_hyperparameters, env.environ)
    try:
        return _run_job(env, stop, started, secrets)
    finally:
        stop.restore()


def _run_job(env: Environment, stop: StopController, started: float, secrets: list[str]) -> int:
    paths = env.paths
    _prepare_tree(paths)
    report.clear_stale(paths)
    sync: SyncHandle | None = None
    outcome: report.Outcome
    try:
        # Restore first (a spot restart resumes from S3), then watch: the restored files
        # are already in S3 and are not uploaded back.
        _restore_checkpoints(env)
        _check_stop(stop)
        sync = _start_sync(env)
        outcome = _execute(env, stop, started, secrets)
    except _Stopped as stopped:
        outcome = _stopped_before_start(env, stopped.signum, started, stopped.during)
    except SmtkError as exc:
        logger.error("%s", exc)
        outcome = report.from_error(exc, host=env.current_host, seconds=time.monotonic() - started)
    except Exception as exc:  # reported as an internal error with its traceback
        logger.exception("internal error")
        outcome = report.from_internal_error(exc, host=env.current_host)
    finally:
        if len(env.hosts) > 1:
            from smtk import peers

            outcome = peers.settle(outcome)  # tell the peers at once; name the first failure
        if sync is not None:
            outcome = _stop_sync(sync, stop, outcome)
    status = report.finish(paths, _with_job_identity(env, outcome), secrets)
    if len(env.hosts) > 1:
        from smtk import peers

        peers.close()  # a master keeps its outcome for hosts not yet told, up to SMTK_OUTCOME_LINGER
    return status


def _with_job_identity(env: Environment, outcome: report.Outcome) -> report.Outcome:
    """Name the job in ``failure.json`` (``TRAINING_JOB_NAME``, ``TRAINING_JOB_ARN``)."""
    identity = {
        "job_name": env.job_name_or_default or None,
        "job_arn": env.environ.get("TRAINING_JOB_ARN") or None,
    }
    identity = {k: v for k, v in identity.items() if v}
    if outcome.success or not identity:
        return outcome
    return dataclasses.replace(outcome, extra={**outcome.extra, **identity})


def _prepare_tree(paths: Paths) -> None:
    for directory in (paths.model_dir, paths.output_dir, paths.output_data_dir, paths.code_dir):
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError("job tree", directory, "a writable directory", f"<{exc.strerror}>") from None


def _check_stop(stop: StopController) -> None:
    if stop.stop_signal is not None:
        raise _Stopped(stop.stop_signal)


def _execute(env: Environment, stop: StopController, started: float, secrets: list[str]) -> report.Outcome:
    from smtk import codefetch, entry_point, install
    from smtk.launch import select

    if len(env.hosts) > 1:
        from smtk import peers

        peers.join(env, stop, secrets)  # failures before the launch reach the peers too
    codefetch.fetch_code(env)
    _check_stop(stop)
    entry = entry_point.resolve(env)
    try:
        install.install_requirements(env, entry, stopped=lambda: stop.stop_signal)
    except install.InstallInterrupted as interrupted:
        raise _Stopped(interrupted.signum, "while pip was installing the job's dependencies") from None
    _check_stop(stop)
    plan = select.build_plan(env, entry)
    _log_plan(plan, secrets)
    if plan.kind == "mpi-worker":
        return _run_mpi_worker(env, plan, started)
    if len(plan.hosts) > 1:
        from smtk import cluster

        cluster.wait_for_peers(env, plan)
        _check_stop(stop)
    if plan.kind in ("torchrun", "mpi"):
        from smtk.launch import rank as rank_wrapper

        rank_wrapper.clear_failures(env.paths.root)
    result = run(plan, stop=stop, secrets=secrets)
    seconds = time.monotonic() - started
    if result.stopped_by is not None:
        return _stopped_outcome(env, plan, result, secrets, seconds)
    if result.returncode == 0:
        return report.success(seconds, host=env.current_host)
    cause, category, retryable, detail = report.classify_exit(
        returncode=result.returncode,
        signum=result.signal,
        stderr_tail=result.stderr_tail,
        stdout_tail=result.stdout_tail,
        code_dir=env.paths.code_dir,
        what=_describe_entry(plan),
    )
    host, failed_rank = env.current_host, None
    if plan.kind in ("torchrun", "mpi"):
        # Name the first rank that failed (its wrapper announced it), not the launcher.
        found = rank_wrapper.locate_failure(result.stderr_tail, env.paths.root)
        if found is not None:
            host, failed_rank, cause = found
    return report.Outcome(
        success=False,
        exit_status=result.exit_status,
        cause=cause,
        category=category,
        host=host,
        rank=failed_rank,
        signal=result.signal,
        stderr_tail=result.stderr_tail[-40:],
        retryable=retryable,
        detail=detail,
        command=" ".join(redact_argv(plan.argv, secrets)),
        seconds=seconds,
    )


def _describe_entry(plan: LaunchPlan) -> str:
    names = {"process": "the training script", "function": "the training function"}
    return names.get(plan.kind, f"the {plan.kind} launcher")


def _log_plan(plan: LaunchPlan, secrets: list[str]) -> None:
    logger.info(
        "launcher: %s on %d host(s), %d process(es) per host",
        plan.kind,
        len(plan.hosts),
        plan.processes_per_host,
    )
    logger.info("command: %s", " ".join(redact_argv(plan.argv, secrets)))
    logger.info("working directory: %s", plan.cwd)
    for note in plan.notes:
        logger.debug("plan: %s", note)


def _stopped_outcome(
    env: Environment, plan: LaunchPlan, result: Any, secrets: list[str], seconds: float
) -> report.Outcome:
    signum = result.stopped_by
    name = report.signal_name(signum)
    how = "the maximum runtime was reached" if result.timed_out else f"train received {name}"
    if result.killed_after_grace:
        ending = "it did not exit within the grace period and was killed with SIGKILL"
    elif result.signal is not None:
        ending = f"it ended by {report.signal_name(result.signal)}"
    else:
        ending = f"it exited with status {result.returncode}"
    return report.Outcome(
        success=False,
        exit_status=128 + signum,
        cause=f"Stopped: {how}; it was forwarded to the job's processes and {ending}",
        category="stopped",
        host=env.current_host,
        signal=signum,
        stderr_tail=result.stderr_tail[-20:],
        retryable=True,
        command=" ".join(redact_argv(plan.argv, secrets)),
        seconds=seconds,
        extra={"timed_out": result.timed_out, "killed_after_grace": result.killed_after_grace},
    )


def _stopped_before_start(env: Environment, signum: int, started: float, during: str = "") -> report.Outcome:
    when = f" ({during})" if during else ""
    return report.Outcome(
        success=False,
        exit_status=128 + signum,
        cause=f"Stopped: train received {report.signal_name(signum)} before the training code started{when}",
        category="stopped",
        host=env.current_host,
        signal=signum,
        retryable=True,
        seconds=time.monotonic() - started,
    )


def _run_mpi_worker(env: Environment, plan: LaunchPlan, started: float) -> report.Outcome:
    from smtk.launch import worker

    outcome = worker.run_worker(env, plan)
    seconds = time.monotonic() - started
    if outcome.exit_status == 0:
        return report.success(seconds, host=env.current_host)
    return report.Outcome(
        success=False,
        exit_status=outcome.exit_status,
        cause=outcome.failure_reason or f"the MPI job failed (exit status {outcome.exit_status})",
        category="mpi-worker",
        host=env.current_host,
        seconds=seconds,
    )


# -- side services ---------------------------------------------------------------------


def _wants_sync(env: Environment) -> bool:
    checkpoint = env.checkpoint_config
    return bool(env.s3_output) or bool(checkpoint is not None and checkpoint.s3_uri)


def _restore_checkpoints(env: Environment) -> None:
    if not _wants_sync(env):
        return
    from smtk.sync import restore_checkpoints

    restored = restore_checkpoints(env)
    if restored is not None:
        logger.info("%s", restored.summary())


def _start_sync(env: Environment) -> SyncHandle | None:
    if not _wants_sync(env):
        return None
    from smtk.sync import start_sync

    return start_sync(env)


def _stop_sync(sync: SyncHandle, stop: StopController, outcome: report.Outcome) -> report.Outcome:
    budget: float | None = None  # the sync's own bound (SMTK_SYNC_FLUSH_SECONDS)
    if stop.first_at is not None:
        # Whatever is left of the platform's stop window, minus a margin for the outcome files.
        left = max(5.0, PLATFORM_STOP_WINDOW - (time.monotonic() - stop.first_at) - 5.0)
        budget = min(left, sync.settings.flush_seconds)
    try:
        sync_report = sync.stop(budget)
    except Exception as exc:  # sync trouble must never hide the job's outcome
        logger.error("output sync could not be stopped cleanly: %s", exc)
        return outcome
    logger.info("%s", sync_report.summary())
    if outcome.success and sync_report.fails_job:
        return report.Outcome(
            success=False,
            exit_status=1,
            cause=f"output sync failed: {sync_report.summary()} (SMTK_SYNC_STRICT is on)",
            category="sync-error",
            host=outcome.host,
            stderr_tail=tuple(sync_report.errors[-10:]),
            retryable=True,
            seconds=outcome.seconds,
        )
    return outcome


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
