"""``train``: run the job in ``/opt/ml`` from start to outcome.

The flow (DESIGN.md), one phase after another, each interruptible by the stop::

    read      Environment()                      ConfigError -> exit 2
    prepare   restore checkpoints, start sync,   ArchiveError/EntryPointError -> 2
              join the status channel (hosts),   InstallError -> 3
              fetch code, resolve entry point,
              install requirements
    plan      launch.select.build_plan()         pure (hardware probes aside)
    wait      readiness.wait_for_peers()         ClusterError -> 4 (multi-host only)
    run       supervisor.run()                   streams logs, forwards SIGTERM/SIGINT
    settle    tell the other hosts; root cause   (multi-host only)
    flush     stop the output sync               bounded by the platform's stop window
    report    report.finish()                    success | failure + failure.json, exit status

The :class:`~smtk.stop.Stop` is installed by the console script before anything else
(:func:`smtk.cli.train_console`), and every phase takes it: a stop at any moment ends
the job with 128 + signal and a failure that names what it interrupted
(``Stopped: train received SIGTERM while fetching the code``). What ``train`` writes to
its stdout and stderr, and the failure files, go through one masker (:mod:`smtk.log`).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtk import __version__, causes, codefetch, entry_point, failure, install, log, report, supervisor
from smtk.cluster import readiness
from smtk.cluster.session import Session, join
from smtk.environment import Environment
from smtk.errors import ConfigError, EntryPointError, SmtkError
from smtk.failure import Failure, Outcome, Success
from smtk.files import describe, read_regular
from smtk.launch import limits, select, servers, worker
from smtk.launch import rank as rank_wrapper
from smtk.launch.plan import LaunchPlan
from smtk.paths import Paths
from smtk.redact import secret_values
from smtk.stop import Stop, Stopped, signal_name
from smtk.sync import restore_checkpoints, start_sync

if TYPE_CHECKING:
    from smtk.entry_point import EntryPoint
    from smtk.supervisor import ProcessResult
    from smtk.sync import SyncHandle

logger = logging.getLogger("smtk")

#: Seconds kept back from the platform's stop window (``SMTK_STOP_WINDOW``) for the outcome files.
REPORT_MARGIN = 5.0

USAGE = """usage: train

Run the training job described by /opt/ml (or $SAGEMAKER_BASE_DIR): fetch the code,
install its requirements, launch the entry point, and write output/success or
output/failure. It takes no options; the platform may pass the word "train", which is
ignored. The user guide (docs/user-guide.md) describes the job contract."""


def main(argv: Sequence[str] = (), stop: Stop | None = None) -> int:
    """Run the job; returns the exit status (CONTRACT.md section 6)."""
    stop = stop or Stop().install()
    started = time.monotonic()
    log.configure()
    early = _arguments(argv)
    if early is not None:
        return early
    stop.phase = "reading the job"
    paths = Paths.from_environ()
    try:
        env = Environment()
        log.configure(env.log_level)
        log.add_secrets(secret_values(env.raw_hyperparameters, env.environ))
        stop.check()
    except Stopped as stopped:
        return report.finish(paths, failure.from_stop(stopped, seconds=time.monotonic() - started))
    except SmtkError as exc:
        logger.error("%s", exc)
        return report.finish(paths, failure.from_error(exc, seconds=time.monotonic() - started))
    except Exception as exc:  # anything else is our bug: report it, never a bare traceback
        logger.exception("internal error while reading the job")
        return report.finish(paths, failure.from_internal_error(exc))
    return Job(env, stop, started).run()


def _arguments(argv: Sequence[str]) -> int | None:
    """``None`` to run the job; else the status to exit with, having printed help or version.

    The platform starts ``IMAGE train`` with the image's ``ENTRYPOINT ["train"]``, so
    the single word ``train`` is accepted and ignored. Anything else runs nothing and
    touches nothing: ``train --version`` must not create ``/opt/ml``.
    """
    args = [a for a in argv if a != "train"]
    if not args:
        return None
    if args[0] in ("-h", "--help"):
        log.write("stdout", USAGE)
        return 0
    if args[0] in ("-V", "--version"):
        log.write("stdout", f"train (smtk {__version__})")
        return 0
    log.write("stderr", f"train: unexpected argument {args[0]!r}\n\n{USAGE}")
    return 2


class Job:
    """One run of ``train`` on this host, from the read environment to the exit status."""

    def __init__(self, env: Environment, stop: Stop, started: float) -> None:
        self.env = env
        self.stop = stop
        self.started = started
        self.host = env.current_host
        self.session: Session | None = None
        self.sync: SyncHandle | None = None

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def run(self) -> int:
        paths = self.env.paths
        outcome: Outcome
        try:
            outcome = self._execute()
        except Stopped as stopped:
            outcome = failure.from_stop(stopped, host=self.host, seconds=self.seconds())
        except SmtkError as exc:
            logger.error("%s", exc)
            outcome = failure.from_error(exc, host=self.host, seconds=self.seconds())
        except Exception as exc:  # reported as an internal error with its traceback
            logger.exception("internal error")
            outcome = failure.from_internal_error(exc, host=self.host, seconds=self.seconds())
        outcome = self._settle(outcome)
        outcome = self._stop_sync(outcome)
        self._close_session()
        outcome = self._late_stop(outcome)
        return report.finish(paths, self._with_job_identity(outcome), log.masker())

    # -- the phases ---------------------------------------------------------------------------

    def _execute(self) -> Outcome:

        env, stop = self.env, self.stop
        stop.phase = "preparing the job tree"
        _prepare_tree(env.paths)
        report.clear_stale(env.paths)
        # Restore first (a spot restart resumes from S3), then watch: the restored files
        # are already in S3 and are not uploaded back.
        stop.phase = "restoring checkpoints from S3"
        _restore_checkpoints(env, stop)
        stop.check()
        self.sync = _start_sync(env)
        if len(env.hosts) > 1:
            stop.phase = "joining the job's status channel"
            # Failures before the launch reach the peers too.
            self.session = join(env, stop, log.masker())
        stop.phase = "fetching the code"
        stop.call(codefetch.fetch_code, env, stop)
        stop.phase = "resolving the entry point"
        entry = entry_point.resolve(env)
        stop.phase = "installing the job's dependencies with pip"
        install.install_requirements(env, entry, stop=stop)
        stop.phase = "planning the launch"

        plan: LaunchPlan = stop.call(select.build_plan, env, entry)
        _log_plan(plan)
        if plan.kind == "mpi-worker":
            stop.phase = "serving the MPI master's ranks"
            return self._run_mpi_worker(plan)
        if len(plan.hosts) > 1:
            stop.phase = "waiting for the other hosts to be ready"
            readiness.wait_for_peers(env, plan, self.session, stop)
        stop.check()
        stop.phase = "running the training code"
        return self._launch(plan, entry)

    def _launch(self, plan: LaunchPlan, entry: EntryPoint) -> Outcome:

        env = self.env
        limits.check(plan, env.environ)
        if plan.kind in ("torchrun", "mpi"):
            rank_wrapper.clear_failures(env.paths.root)
        error_file = plan.env.get("TORCHELASTIC_ERROR_FILE") if plan.kind in ("process", "function") else None
        if error_file is not None:
            # The file is this run's: one left by an earlier run of the same tree must not
            # become this run's root cause.
            _remove_stale(error_file)
        try:
            if plan.companions:  # TensorFlow parameter servers beside the script
                result, early = servers.run(
                    plan,
                    stop=self.stop,
                    grace_period=env.settings.grace_period,
                    progress_interval=env.settings.progress_interval,
                    host=self.host,
                    code_dir=env.paths.code_dir,
                    mask=log.masker().mask_argv,
                )
                if early is not None and result.stopped_by is None:
                    return early.evolve(seconds=self.seconds())
            else:
                result = supervisor.run(
                    plan,
                    stop=self.stop,
                    grace_period=env.settings.grace_period,
                    progress_interval=env.settings.progress_interval,
                )
        except OSError as exc:
            raise _start_error(exc, plan, entry) from None
        if result.stopped_by is not None:
            return self._stopped_outcome(plan, result)
        if result.returncode == 0:
            return Success(self.seconds(), host=self.host)
        found = causes.process_failure(
            returncode=result.returncode,
            signum=result.signal,
            stderr_tail=result.stderr_tail,
            stdout_tail=result.stdout_tail,
            code_dir=env.paths.code_dir,
            what=_describe_entry(plan),
            error_file=error_file,
            host=self.host,
            command=_display(plan),
            seconds=self.seconds(),
        )
        if plan.kind in ("torchrun", "mpi"):
            # Name the first rank that failed (its wrapper reported it), not the launcher.
            ranks = rank_wrapper.reported_failures(env.paths.root, self.session)
            root = failure.root_cause(ranks)
            if root is not None:
                found = root.evolve(
                    exit_status=found.exit_status,
                    command=found.command,
                    seconds=found.seconds,
                    extra={**root.extra, "launcher_cause": found.cause},
                )
        return found

    def _stopped_outcome(self, plan: LaunchPlan, result: ProcessResult) -> Failure:
        signum = result.stopped_by
        assert signum is not None
        name = signal_name(signum)
        how = "the maximum runtime was reached" if result.timed_out else f"train received {name}"
        if result.killed_after_grace:
            ending = "it did not exit within the grace period and was killed with SIGKILL"
        elif result.signal is not None:
            ending = f"it ended by {signal_name(result.signal)}"
        else:
            ending = f"it exited with status {result.returncode}"
        return Failure(
            cause=f"Stopped: {how}; it was forwarded to the job's processes and {ending}",
            category="stopped",
            exit_status=128 + signum,
            host=self.host,
            signal=signum,
            stderr_tail=result.stderr_tail[-20:],
            retryable=True,
            command=_display(plan),
            seconds=self.seconds(),
            extra={"timed_out": result.timed_out, "killed_after_grace": result.killed_after_grace},
        )

    def _run_mpi_worker(self, plan: LaunchPlan) -> Outcome:

        master = worker.run_worker(self.env, plan, self.session, self.stop)
        if master is None:
            return Success(self.seconds(), host=self.host)
        return master.evolve(extra={**master.extra, "reported_by": self.host}, seconds=self.seconds())

    # -- after the run --------------------------------------------------------------------------

    def _settle(self, outcome: Outcome) -> Outcome:
        """Tell the other hosts how this host ended; report the job's root cause."""
        if self.session is None:
            return outcome
        self.stop.phase = "telling the other hosts the outcome"
        return self.session.settle(outcome)

    def _stop_sync(self, outcome: Outcome) -> Outcome:
        sync = self.sync
        if sync is None:
            return outcome
        self.stop.phase = "flushing the output sync to S3"
        logger.info("flushing the output sync to S3 (at most %.0f s)", sync.settings.flush_seconds)
        try:
            sync_report = sync.stop(deadline=self._flush_deadline)
        except Exception as exc:  # sync trouble must never hide the job's outcome
            logger.error("output sync could not be stopped cleanly: %s", exc)
            return outcome
        logger.info("%s", sync_report.summary())
        if outcome.success and sync_report.fails_job:
            return Failure(
                cause=f"output sync failed: {sync_report.summary()} (SMTK_SYNC_STRICT is on)",
                category="sync-error",
                host=outcome.host,
                stderr_tail=tuple(sync_report.errors[-10:]),
                retryable=True,
                seconds=outcome.seconds,
            )
        return outcome

    def _flush_deadline(self, started: float, budget: float) -> float:
        """When the final flush must end: its own budget, or earlier once a stop arrived
        (what is left of the platform's stop window, minus a margin for the report)."""
        deadline = started + budget
        first = self.stop.first_at
        if first is not None:
            window = self.env.settings.stop_window
            deadline = min(deadline, max(started + REPORT_MARGIN, first + window - REPORT_MARGIN))
        return deadline

    def _close_session(self) -> None:
        if self.session is not None:
            # A master keeps its outcome for hosts not yet told, up to SMTK_OUTCOME_LINGER
            # (or until a stop).
            self.stop.phase = "waiting for the other hosts to learn the outcome"
            self.session.close()

    def _late_stop(self, outcome: Outcome) -> Outcome:
        """A stop that arrived after the run ended (while settling or flushing) still ends
        the job as stopped; the outcome it interrupted is kept in the record."""
        signum = self.stop.signum
        if signum is None or (isinstance(outcome, Failure) and outcome.category == "stopped"):
            return outcome
        if isinstance(outcome, Failure) and outcome.extra.get("peer_failure"):
            return outcome  # the stop was the channel's reaction to a peer's failure
        late = failure.from_stop(Stopped(signum, self.stop.phase), host=self.host, seconds=self.seconds())
        if isinstance(outcome, Failure):
            return late.evolve(
                cause=f"{late.cause}; the job had already failed: {outcome.cause}",
                stderr_tail=outcome.stderr_tail,
                detail=outcome.detail,
                extra={"interrupted_outcome": outcome.to_json()},
            )
        return late.evolve(cause=f"{late.cause}; the training code had succeeded")

    def _with_job_identity(self, outcome: Outcome) -> Outcome:
        """Name the job in ``failure.json`` (``TRAINING_JOB_NAME``, ``TRAINING_JOB_ARN``)."""
        if outcome.success or not isinstance(outcome, Failure):
            return outcome
        identity = {
            "job_name": self.env.job_name_or_default or None,
            "job_arn": self.env.environ.get("TRAINING_JOB_ARN") or None,
        }
        identity = {k: v for k, v in identity.items() if v}
        return outcome.evolve(extra={**outcome.extra, **identity}) if identity else outcome


# -- helpers -----------------------------------------------------------------------------------


def _prepare_tree(paths: Paths) -> None:
    """Create the directories the job writes to; a file in their place is a ConfigError.

    ``output`` is smtk's own: something other than a directory there is moved aside (so
    the failure file can be written), never deleted.
    """
    if os.path.lexists(paths.output_dir) and not os.path.isdir(paths.output_dir):
        moved = f"{paths.output_dir}.moved-{os.getpid()}"
        try:
            os.rename(paths.output_dir, moved)
            logger.warning("%s was %s: moved it to %s", paths.output_dir, describe(moved), moved)
        except OSError:
            pass  # reported below as a ConfigError
    for directory in (paths.model_dir, paths.output_dir, paths.output_data_dir, paths.code_dir):
        if os.path.lexists(directory) and not os.path.isdir(directory):
            raise ConfigError("job tree", directory, "a directory", f"<{describe(directory)}>")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError("job tree", directory, "a writable directory", f"<{exc.strerror}>") from None


def _remove_stale(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a directory or unwritable: causes reads only a regular file
        logger.warning("cannot remove %s left by an earlier run: %s", path, exc.strerror or exc)


def _start_error(exc: OSError, plan: LaunchPlan, entry: EntryPoint) -> SmtkError:
    """Why the entry point could not be started at all, as the error the user can act on."""

    program = plan.argv[0] if plan.argv else "?"
    if exc.errno == errno.E2BIG:
        return ConfigError(
            "the launch command",
            None,
            "a command line and environment within the kernel's limits",
            "<too long: see the hyperparameters and environment variables>",
            hint="pass large values in a file (a channel or the code dir) rather than as hyperparameters",
        )
    if exc.errno == errno.ENOENT and entry.kind == "shell" and entry.has_shebang:
        interpreter = _shebang(os.path.join(entry.code_dir, entry.name))
        return EntryPointError(
            f"entry point {entry.name!r} cannot be started: the interpreter in its '#!' line "
            f"({interpreter or 'unreadable'}) does not exist in this image",
            hint="install it in the image, or fix the script's first line",
        )
    if exc.errno in (errno.ENOEXEC, errno.EACCES, errno.ENOENT):
        return EntryPointError(
            f"entry point {entry.name!r} cannot be started: {program}: {exc.strerror}",
            hint="check the file's format, its execute bit and its '#!' line",
        )
    return EntryPointError(f"cannot start {program}: {exc.strerror or exc}")


def _shebang(path: str) -> str | None:

    head = read_regular(path, 256)
    if not head or not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _describe_entry(plan: LaunchPlan) -> str:
    names = {"process": "the training script", "function": "the training function"}
    return names.get(plan.kind, f"the {plan.kind} launcher")


def _display(plan: LaunchPlan) -> str:
    """The command, shell-quoted, secrets masked (for logs and the failure file)."""
    return plan.display(log.masker().mask_argv)


def _log_plan(plan: LaunchPlan) -> None:
    logger.info(
        "launcher: %s on %d host(s), %d process(es) per host",
        plan.kind,
        len(plan.hosts),
        plan.processes_per_host,
    )
    if plan.argv:
        logger.info("command: %s", _display(plan))
    logger.info("working directory: %s", plan.cwd)
    for note in plan.notes:
        logger.debug("plan: %s", note)


def _wants_sync(env: Environment) -> bool:
    checkpoint = env.checkpoint_config
    return bool(env.s3_output) or bool(checkpoint is not None and checkpoint.s3_uri)


def _restore_checkpoints(env: Environment, stop: Stop) -> None:
    if not _wants_sync(env):
        return

    restored = stop.call(restore_checkpoints, env, stop)
    if restored is not None:
        logger.info("%s", restored.summary())


def _start_sync(env: Environment) -> SyncHandle | None:
    if not _wants_sync(env):
        return None

    return start_sync(env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
