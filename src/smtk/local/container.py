"""Run one host's job inside a container image, the way the platform starts it: ``IMAGE train``.

::

    from smtk.local.container import find_engine, run_in_container

    engine = find_engine()                      # "/usr/bin/podman", or None
    status = run_in_container("my-image", "/jobs/run-1/algo-1",
                              environ={"TRAINING_JOB_NAME": "run-1"})

The host's job tree is bind-mounted at ``/opt/ml``, part by part (``input``, ``model``,
``output``, ``checkpoints``, and ``code`` when the host's copy has files, so an image that
ships its code in ``/opt/ml/code`` keeps it); the container runs ``train`` (the image's
``ENTRYPOINT ["train"]`` gets ``train`` as its argument, as on the platform, where smtk's
``train`` accepts and ignores it). Output streams straight to this process's
stdout/stderr (masked, through :mod:`smtk.log`); the exit status is the container's. It
runs under the :mod:`smtk.supervisor`: SIGTERM/SIGINT received here are forwarded to the
container (``<engine> kill --signal``); if it has not exited ``stop_timeout`` seconds
later, or on a second signal, it is killed. With
``max_runtime`` (the job's ``MaxRuntimeInSeconds``), the container gets the same SIGTERM
once that many seconds have passed, as the platform does.

Settings:

``SMTK_CONTAINER_ENGINE``
    ``podman`` or ``docker`` (a name on ``PATH`` or a path). Default: the first of podman,
    docker whose ``info`` succeeds, so a ``docker`` CLI without a reachable engine is skipped.
``SMTK_CONTAINER_ARGS``
    Extra ``<engine> run`` options, split like a shell would (``shlex``), placed before the
    image; default none. Hosts whose runtime rejects the default resource limits need e.g.
    ``--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024``.

Environment values are passed as ``-e NAME`` with the value in the engine's own
environment, so no value (a secret) ever appears on a command line.

GPUs (``gpus``: ``all``, a count or device indices ``0,1``) are asked for in the form each
engine understands: docker's ``--gpus`` (NVIDIA Container Toolkit), podman's CDI devices
(``--device nvidia.com/gpu=N``). pip's cache (``SMTK_LOCAL_PIP_CACHE``, default
``~/.cache/smtk/pip``) is mounted into the container, so a job's ``requirements.txt`` is
downloaded once, not on every run. When the engine itself fails (its own message among
the lines, a status of 125 to 127), a known cause is explained with what to set.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Mapping, Sequence

from smtk import log
from smtk.config import read_resource_config
from smtk.errors import ConfigError
from smtk.lines import LineSink
from smtk.settings import Settings
from smtk.stop import Stop
from smtk.supervisor import Supervisor, prefixed

logger = logging.getLogger("smtk")

ENGINE_ENV = "SMTK_CONTAINER_ENGINE"
#: Engines tried, in order, when ``SMTK_CONTAINER_ENGINE`` is not set.
ENGINES = ("podman", "docker")
#: Where the job tree goes inside the container (the platform's path).
CONTAINER_ROOT = "/opt/ml"
#: The parts of the job tree mounted from the host (``code`` too when the host has code).
TREE_PARTS = ("input", "model", "output", "checkpoints")
#: Seconds an ``<engine> info`` probe may take before the engine counts as not working.
PROBE_TIMEOUT = 60.0


def find_engine(environ: Mapping[str, str] | None = None) -> str | None:
    """The path of a container engine that answers ``info``, or ``None``.

    ``SMTK_CONTAINER_ENGINE`` names the only candidate when set; otherwise podman, then
    docker. A binary whose engine cannot be reached (a docker CLI with no daemon) does
    not count.
    """
    env = os.environ if environ is None else environ
    configured = Settings.from_environ(env).container_engine
    for candidate in (configured,) if configured else ENGINES:
        path = shutil.which(candidate, path=env.get("PATH"))
        if path is not None and _answers(path, env):
            return path
        logger.debug("container engine %s: %s", candidate, "not found" if path is None else "not working")
    return None


def _answers(path: str, environ: Mapping[str, str]) -> bool:
    try:
        probe = subprocess.run(
            [path, "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(environ),
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def engine_args(environ: Mapping[str, str] | None = None) -> list[str]:
    """The extra ``run`` options from ``SMTK_CONTAINER_ARGS`` (shell-style split)."""
    return list(Settings.from_environ(os.environ if environ is None else environ).container_args)


def gpu_args(engine: str, gpus: str) -> list[str]:
    """``run`` options giving the container ``gpus`` (``all``, a count, or indices ``0,2``)."""
    text = gpus.strip().lower()
    indices: list[str] | None
    count = int(text) if text.isdigit() and not text.startswith("0") else None
    if text == "all":
        indices = None
    elif count is not None:
        indices = [str(i) for i in range(count)]
    elif text and all(part.strip().isdigit() for part in text.split(",")):
        indices = [part.strip() for part in text.split(",")]
    else:
        raise ConfigError("--gpus", None, "all, a number of GPUs, or device indices such as 0 or 0,1", gpus)
    if "podman" in os.path.basename(engine):
        # Podman reaches NVIDIA GPUs through CDI (nvidia-ctk cdi generate).
        devices = ["all"] if indices is None else indices
        return [arg for d in devices for arg in ("--device", f"nvidia.com/gpu={d}")]
    if indices is None:
        return ["--gpus", "all"]
    if count is not None:
        return ["--gpus", str(count)]
    return ["--gpus", f'"device={",".join(indices)}"']  # docker wants the quotes around a list


#: Engine failures with a known cause: (words in the engine's message, what to do).
ENGINE_HINTS = (
    (
        "error setting rlimit",
        "the runtime could not apply the container's resource limits (nested or rootless "
        "containers); set SMTK_CONTAINER_ARGS='--runtime runc --ulimit nofile=1024:1024 "
        "--ulimit nproc=1024:1024'",
    ),
    (
        "cannot connect to the docker daemon",
        "docker's daemon is not running: start it, or use podman (SMTK_CONTAINER_ENGINE=podman)",
    ),
    (
        "could not select device driver",
        "docker cannot give the container GPUs: install the NVIDIA Container Toolkit and restart docker",
    ),
    (
        "unresolvable cdi devices",
        "podman has no CDI description of the GPUs: "
        "run 'nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml'",
    ),
    (
        "pull access denied",
        "the image is not on this machine and cannot be pulled: build it, or log in to its registry",
    ),
    (
        "manifest unknown",
        "the image's tag does not exist in its registry: check the image name",
    ),
    (
        "image not known",
        "the image is not on this machine: build it, or give its full name (registry/name:tag)",
    ),
)


class _EngineErrors:
    """A sink in front of another: remembers the first engine failure with a known cause."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self.hint: str | None = None

    def __call__(self, stream: str, line: str) -> None:
        if self.hint is None and len(line) < 4096:
            lowered = line.lower()
            self.hint = next((hint for words, hint in ENGINE_HINTS if words in lowered), None)
        self._sink(stream, line)


def pip_cache_mount(environ: Mapping[str, str]) -> list[str]:
    """``-v`` for pip's cache shared across runs (``SMTK_LOCAL_PIP_CACHE``; ``off`` for none)."""
    setting = Settings.from_environ(environ).local_pip_cache
    if not setting:
        return []
    path = os.path.abspath(os.path.expanduser(setting))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        logger.warning("no shared pip cache for the container: cannot create %s (%s)", path, exc)
        return []
    return ["-v", f"{path}:{PIP_CACHE}"]


#: Where the shared pip cache is mounted inside the container.
PIP_CACHE = "/var/cache/smtk-pip"


def tree_mounts(host_root: str) -> list[tuple[str, str]]:
    """The bind mounts that put the host's job tree at ``/opt/ml`` (host path, container path).

    Each part the platform provides is mounted on its own (``input``, ``model``, ``output``,
    ``checkpoints``), and ``code`` only when the host's copy has files: an image that ships
    its code in ``/opt/ml/code`` keeps it, as on the platform. Missing parts are created.
    """
    root = os.path.abspath(host_root)
    mounts = []
    for part in TREE_PARTS:
        os.makedirs(os.path.join(root, part), exist_ok=True)
        mounts.append((os.path.join(root, part), f"{CONTAINER_ROOT}/{part}"))
    code = os.path.join(root, "code")
    if os.path.isdir(code) and os.listdir(code):
        mounts.append((code, f"{CONTAINER_ROOT}/code"))
    return mounts


def run_argv(
    engine: str,
    image: str,
    host_root: str,
    *,
    names: Sequence[str],
    name: str,
    hostname: str | None = None,
    options: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``<engine> run`` command line (values of ``names`` travel in the environment)."""
    argv = [engine, "run", "--rm", "--name", name]
    for source, target in tree_mounts(host_root):
        argv += ["-v", f"{source}:{target}"]
    if hostname:
        argv += ["--hostname", hostname]
    for variable in names:
        argv += ["-e", variable]
    argv += [*options, *extra_args, image, "train"]
    return argv


def run_in_container(
    image: str,
    host_root: str,
    *,
    environ: Mapping[str, str],
    engine: str | None = None,
    name: str | None = None,
    stop_timeout: int = 120,
    max_runtime: float | None = None,
    extra_args: Sequence[str] = (),
    stop: Stop | None = None,
    sink: LineSink | None = None,
    gpus: str | None = None,
) -> int:
    """Run ``IMAGE train`` with ``host_root`` as ``/opt/ml``; returns the container's exit status.

    ``environ`` is the job's environment inside the container (only these variables are
    passed). ``engine`` defaults to :func:`find_engine`; ``extra_args`` are more ``run``
    options (mounts, ``--network``, ``--gpus``), after ``SMTK_CONTAINER_ARGS``. ``stop``
    (SIGTERM/SIGINT received here) is forwarded to the container through the engine;
    ``max_runtime``: seconds after which the container is stopped like on SIGTERM.
    """
    if not os.path.isdir(host_root):
        raise ConfigError("run_in_container", "host_root", "an existing job tree directory", host_root)
    if stop is None and threading.current_thread() is threading.main_thread():
        # Called as a library without a stop: record SIGTERM/SIGINT for the time of the run.
        own = Stop().install()
        try:
            return run_in_container(
                image,
                host_root,
                environ=environ,
                engine=engine,
                name=name,
                stop_timeout=stop_timeout,
                max_runtime=max_runtime,
                extra_args=extra_args,
                stop=own,
                sink=sink,
                gpus=gpus,
            )
        finally:
            own.restore()
    stop = stop or Stop()
    path = engine or stop.call(find_engine, during="looking for a container engine")
    if path is None:
        wanted = Settings.from_environ(os.environ).container_engine or " or ".join(ENGINES)
        raise ConfigError(
            ENGINE_ENV,
            None,
            "a working container engine (podman or docker whose 'info' succeeds)",
            f"none working among {wanted}",
            hint="install podman, or start the docker daemon, or set SMTK_CONTAINER_ENGINE",
        )
    container = name or f"smtk-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cache = pip_cache_mount(os.environ)
    environ = {**environ, "PIP_CACHE_DIR": PIP_CACHE} if cache and "PIP_CACHE_DIR" not in environ else environ
    argv = run_argv(
        path,
        image,
        host_root,
        names=sorted(environ),
        name=container,
        hostname=_current_host(host_root),
        options=[*cache, *(gpu_args(path, gpus) if gpus else []), *engine_args()],
        extra_args=extra_args,
    )
    # Values never are on argv, but SMTK_CONTAINER_ARGS may carry an option with a secret.
    logger.info("container: %s", shlex.join(log.masker().mask_argv(argv)))
    signaller = _EngineSignaller(path, container)
    supervisor = Supervisor(
        stop=stop, grace=stop_timeout, grace_setting="the container's stop timeout", max_runtime=max_runtime
    )
    # The engine's own session: a terminal's Ctrl-C reaches only smtk, which forwards it
    # once through the engine (the engine CLI would proxy it a second time otherwise).
    errors = _EngineErrors(sink or prefixed(""))
    supervisor.start(
        "container",
        argv,
        env={**os.environ, **environ},
        sink=errors,
        signaller=signaller.send,
        progress_interval=0.0,
    )
    try:
        result = supervisor.wait()["container"]
    finally:
        signaller.finished.set()
    if result.exit_status != 0 and errors.hint is not None:
        logger.error("container engine %s failed: %s", os.path.basename(path), errors.hint)
    if result.stopped_by is not None:
        logger.info(
            "container %s stopped after %s: exit status %d",
            container,
            signal.Signals(result.stopped_by).name,
            result.exit_status,
        )
    return result.exit_status


def _current_host(host_root: str) -> str | None:
    """The job's ``current_host``, so the container's hostname is the platform's (``algo-1``)."""
    path = os.path.join(host_root, "input", "config", "resourceconfig.json")
    if not os.path.isfile(path):
        return None
    try:
        return read_resource_config(path).current_host
    except ConfigError:
        # train inside the container reports the bad file in output/failure.
        return None


class _EngineSignaller:
    """Sends signals to a running container through ``<engine> kill --signal`` (in a thread:
    the engine CLI may take a while, and the supervisor's loop must not wait for it)."""

    #: Attempts (one second apart) at signalling a container the engine has not created yet.
    ATTEMPTS = 10

    def __init__(self, engine: str, container: str) -> None:
        self.engine = engine
        self.container = container
        self.finished = threading.Event()

    def send(self, signum: int) -> None:
        name = "KILL" if signum == signal.SIGKILL else signal.Signals(signum).name
        threading.Thread(target=self._kill, args=(name,), name="smtk-engine-kill", daemon=True).start()

    def _kill(self, signame: str) -> None:
        argv = [self.engine, "kill", "--signal", signame, self.container]
        done: subprocess.CompletedProcess[bytes] | None = None
        for _ in range(self.ATTEMPTS):
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=PROBE_TIMEOUT,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                logger.warning("could not signal container %s: %s", self.container, exc)
                return
            if done.returncode == 0:
                return
            # Not created yet (the signal came right after start), or already gone.
            if self.finished.wait(1.0):
                return
        if done is not None:
            logger.warning(
                "could not signal container %s: %s",
                self.container,
                done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}",
            )
