"""The base images for real: build docker/Dockerfile.cpu and the example image with podman,
run jobs in them with a bind-mounted job tree, and run ``smtk local --image`` end to end.

Needs podman that can run containers and a local Debian base image
(``localhost/smtk-base:bookworm``, made by ``docker/build-base.sh``, which needs root and
debootstrap; ``.ci/container-setup.sh`` makes it). Without them every test here skips with
the reason, unless ``CONTAINER_TEST_REQUIRED=1`` (CI), which turns the skip into a
failure. Builds reuse podman's layer cache, so a re-run rebuilds only what changed; with
``pytest -n 2`` one worker builds while the other waits on a lock, then hits the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.jobtree import clean_env, make_tree

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BASE_IMAGE = os.environ.get("CONTAINER_TEST_BASE_IMAGE", "localhost/smtk-base:bookworm")
CPU_IMAGE = "localhost/smtk-test-cpu:latest"
EXAMPLE_IMAGE = "localhost/smtk-test-example:latest"
#: What podman needs where the runtime may not raise resource limits (these CI machines).
RESTRICTED_OPTIONS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
BUILD_TIMEOUT = 1200

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT + 300)]


def _unavailable(reason: str) -> None:
    if os.environ.get("CONTAINER_TEST_REQUIRED") == "1":
        pytest.fail(f"container test required (CONTAINER_TEST_REQUIRED=1) but {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Engine:
    path: str
    #: ``run``/``build`` options this host needs (empty, or RESTRICTED_OPTIONS).
    options: tuple[str, ...]

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for ``smtk local --image`` / ``run_in_container`` using this engine."""
        env = clean_env(SMTK_CONTAINER_ENGINE=self.path, SMTK_CONTAINER_ARGS=shlex.join(self.options))
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One image build at a time across pytest-xdist workers (the second then hits the cache)."""
    path = Path(tempfile.gettempdir()) / "smtk-container-test.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_base(podman: str) -> None:
    if subprocess.run([podman, "image", "exists", BASE_IMAGE], check=False).returncode == 0:
        return
    if os.geteuid() != 0:
        _unavailable(f"base image {BASE_IMAGE} is missing and debootstrap needs root (uid {os.geteuid()})")
    if shutil.which("debootstrap") is None:
        _unavailable(f"base image {BASE_IMAGE} is missing and debootstrap is not installed")
    made = subprocess.run(
        [str(DOCKER / "build-base.sh"), BASE_IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if made.returncode != 0:
        _unavailable(f"docker/build-base.sh could not make {BASE_IMAGE}: {made.stderr.strip()[-1500:]}")


def _engine_options(podman: str) -> tuple[str, ...]:
    """Plain ``podman run`` if it works here, else the restricted-runtime options."""
    errors = []
    for options in ((), RESTRICTED_OPTIONS):
        probe = subprocess.run(
            [podman, "run", "--rm", *options, BASE_IMAGE, "true"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if probe.returncode == 0:
            return options
        errors.append(f"{' '.join(options) or '(no options)'}: {probe.stderr.strip()[-500:]}")
    _unavailable("podman cannot run a container here: " + " | ".join(errors))
    raise AssertionError("unreachable")


def _build(engine: Engine, context: Path, dockerfile: Path, tag: str, base: str) -> None:
    started = time.monotonic()
    built = subprocess.run(
        [
            engine.path,
            "build",
            *engine.options,
            "--pull=never",
            "--layers",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-f",
            str(dockerfile),
            "-t",
            tag,
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    tail = (built.stdout + built.stderr)[-4000:]
    assert built.returncode == 0, f"building {tag} from {dockerfile} failed:\n{tail}"
    print(f"built {tag} in {time.monotonic() - started:.1f} s", file=sys.stderr)


def _cpu_context(into: Path) -> Path:
    """Just what Dockerfile.cpu copies: pyproject.toml, src/ (no caches), docker/'s ssh files."""
    (into / "docker").mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", into / "pyproject.toml")
    for name in ("sshd_config.conf", "setup-ssh.sh"):
        shutil.copy2(DOCKER / name, into / "docker" / name)
    shutil.copytree(
        REPO / "src",
        into / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    return into


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """podman with the base image and both test images built."""
    podman = shutil.which("podman")
    if podman is None:
        _unavailable("podman is not installed (apt-get install podman runc)")
        raise AssertionError("unreachable")
    info = subprocess.run([podman, "info"], capture_output=True, text=True, timeout=120, check=False)
    if info.returncode != 0:
        _unavailable(f"'podman info' failed: {info.stderr.strip()[-500:]}")
    with _build_lock():
        _ensure_base(podman)
        found = Engine(podman, _engine_options(podman))
        context = _cpu_context(tmp_path_factory.mktemp("cpu-context"))
        _build(found, context, DOCKER / "Dockerfile.cpu", CPU_IMAGE, BASE_IMAGE)
        _build(found, DOCKER / "examples", DOCKER / "examples" / "Dockerfile", EXAMPLE_IMAGE, CPU_IMAGE)
    return found


def _points(slope: float, intercept: float) -> str:
    return "".join(f"{i / 10},{slope * i / 10 + intercept}\n" for i in range(12))


TRAIN_CHANNEL = {"train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}


def _run(engine: Engine, image: str, root: Path, environ: dict[str, str]) -> int:
    """``run_in_container`` in a child process (it installs signal handlers; pytest's own stay)."""
    script = (
        "import json, sys\n"
        "from smtk.local.container import run_in_container\n"
        "sys.exit(run_in_container(sys.argv[1], sys.argv[2], environ=json.loads(sys.argv[3])))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, image, str(root), json.dumps(environ)],
        env=engine.env(PYTHONPATH=str(REPO / "src")),
        timeout=600,
        check=False,
    )
    return child.returncode


def test_success_job_leaves_success_and_model_on_the_host(engine: Engine, tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        hyperparameters={"epochs": 400, "learning-rate": 0.1},
        inputdataconfig=TRAIN_CHANNEL,
        raw_files={"input/data/train/points.csv": _points(2.0, 0.5)},
    )

    status = _run(engine, EXAMPLE_IMAGE, root, {"TRAINING_JOB_NAME": "container-ok"})

    assert status == 0, (
        (root / "output" / "failure").read_text() if (root / "output/failure").exists() else ""
    )
    assert (root / "output" / "success").is_file()
    assert not (root / "output" / "failure").exists()
    model = json.loads((root / "model" / "model.json").read_text())
    # The channel's points (y = 2x + 0.5), not the script's built-in ones (y = 3x + 1).
    assert model["w"] == pytest.approx(2.0, abs=0.05)
    assert model["b"] == pytest.approx(0.5, abs=0.05)
    assert len((root / "output" / "data" / "losses.txt").read_text().split()) == 400


def test_failing_job_leaves_the_root_cause_and_exit_status(engine: Engine, tmp_path: Path) -> None:
    root = make_tree(tmp_path, hyperparameters={"learning-rate": -1})

    status = _run(engine, EXAMPLE_IMAGE, root, {"TRAINING_JOB_NAME": "container-fails"})

    assert status == 1
    failure = (root / "output" / "failure").read_text()
    assert failure.splitlines()[0].startswith("ValueError: learning-rate must be positive, got -1.0"), failure
    assert json.loads((root / "output" / "failure.json").read_text())
    assert not (root / "output" / "success").exists()


def test_code_and_environment_from_the_host(engine: Engine, tmp_path: Path) -> None:
    """The base image runs code from the host's tree; job variables arrive with their values."""
    script = (
        "import os, socket\n"
        "model = os.environ['SM_MODEL_DIR']\n"
        "open(os.path.join(model, 'seen.txt'), 'w').write(\n"
        "    os.environ['JOB_TOKEN'] + ' ' + socket.gethostname() + ' ' + os.getcwd())\n"
    )
    root = make_tree(tmp_path, code={"job.py": script})

    status = _run(engine, CPU_IMAGE, root, {"SAGEMAKER_PROGRAM": "job.py", "JOB_TOKEN": "tok en$1"})

    assert status == 0
    assert (root / "model" / "seen.txt").read_text() == "tok en$1 algo-1 /opt/ml/code"


def test_sigterm_reaches_the_job_in_the_container(engine: Engine, tmp_path: Path) -> None:
    script = (
        "import os, time\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'started'), 'w').close()\n"
        "time.sleep(600)\n"
    )
    root = make_tree(tmp_path, code={"job.py": script})
    runner = (
        "import sys\n"
        "from smtk import log\n"
        "from smtk.local.container import run_in_container\n"
        "log.configure()\n"
        "sys.exit(run_in_container(sys.argv[1], sys.argv[2], environ={'SAGEMAKER_PROGRAM': 'job.py'},\n"
        "                          stop_timeout=60))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", runner, CPU_IMAGE, str(root)],
        env=engine.env(PYTHONPATH=str(REPO / "src")),
    )
    try:
        deadline = time.monotonic() + 300
        while not (root / "model" / "started").exists():
            assert child.poll() is None, f"the container exited early with {child.returncode}"
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        status = child.wait(timeout=240)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert status == 128 + signal.SIGTERM
    failure = (root / "output" / "failure").read_text()
    assert "SIGTERM" in failure, failure


def test_non_root_user_in_group_0_can_run_a_job(engine: Engine) -> None:
    """The image's own /opt/ml (no mounts) is writable for ``--user UID:0``."""
    ran = engine.run(
        "run",
        "--rm",
        *engine.options,
        "--user",
        "4321:0",
        "--entrypoint",
        "sh",
        EXAMPLE_IMAGE,
        "-c",
        "train && test -f /opt/ml/output/success && id -u && cat /opt/ml/model/model.json",
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.strip().splitlines()
    assert lines[-2] == "4321"
    assert json.loads(lines[-1])["w"] == pytest.approx(3.0, abs=0.05)


def test_smtk_local_image_end_to_end(engine: Engine, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "points.csv").write_text(_points(-1.5, 2.0))
    job_dir = tmp_path / "jobs"

    ran = subprocess.run(
        [
            str(Path(sys.executable).parent / "smtk"),
            "local",
            "--image",
            EXAMPLE_IMAGE,
            "--entry-point",
            "train.py",
            "--job-name",
            "image-e2e",
            "--job-dir",
            str(job_dir),
            "-H",
            "epochs=400",
            "-H",
            "learning-rate=0.1",
            "--channel",
            f"train={data}",
        ],
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "succeeded" in ran.stdout
    [model] = job_dir.rglob("model/model.json")
    assert json.loads(model.read_text())["w"] == pytest.approx(-1.5, abs=0.05)
    assert (model.parent.parent / "output" / "success").is_file()


MPI_JOB = """\
import os
from mpi4py import MPI

rank = MPI.COMM_WORLD.Get_rank()
size = MPI.COMM_WORLD.Get_size()
with open(os.path.join(os.environ["SM_MODEL_DIR"], f"rank-{rank}"), "w") as out:
    out.write(f"{os.environ['SM_CURRENT_HOST']} {size}")
"""


@contextlib.contextmanager
def _network(engine: Engine) -> Iterator[tuple[str, str]]:
    """A private podman network with a free /24 of 10.89.0.0/16: (name, address prefix)."""
    import secrets

    name = f"smtk-test-{secrets.token_hex(4)}"
    for _ in range(20):
        prefix = f"10.89.{secrets.randbelow(250) + 1}"
        made = engine.run("network", "create", "--subnet", f"{prefix}.0/24", name)
        if made.returncode == 0:
            break
    else:
        _unavailable(f"podman could not create a network: {made.stderr.strip()[-500:]}")
    try:
        yield name, prefix
    finally:
        engine.run("network", "rm", "-f", name)


def _logs(engine: Engine, name: str) -> str:
    ran = engine.run("logs", name)
    return f"--- {name}\n{ran.stdout}{ran.stderr}"


def test_mpi_job_across_two_containers_over_ssh(engine: Engine, tmp_path: Path) -> None:
    """mpirun on algo-1 starts ranks on algo-2 over the image's sshd (port 22, baked key)."""
    hosts = ["algo-1", "algo-2"]
    roots = {
        host: make_tree(
            tmp_path / host,
            hyperparameters={"sagemaker_mpi_enabled": True, "sagemaker_program": "mpi_job.py"},
            resourceconfig={"current_host": host, "hosts": hosts, "network_interface_name": "eth0"},
            code={"mpi_job.py": MPI_JOB},
        )
        for host in hosts
    }
    from smtk.local.container import tree_mounts

    names = []
    with _network(engine) as (network, prefix):
        addresses = {host: f"{prefix}.{10 + i}" for i, host in enumerate(hosts, start=1)}
        add_hosts = [arg for host, ip in addresses.items() for arg in ("--add-host", f"{host}:{ip}")]
        try:
            for host in hosts:
                name = f"{network}-{host}"
                mounts = [arg for src, dst in tree_mounts(str(roots[host])) for arg in ("-v", f"{src}:{dst}")]
                started = engine.run(
                    "run", "-d", *engine.options, "--name", name, "--network", network,
                    "--ip", addresses[host], "--hostname", host, *add_hosts, *mounts, CPU_IMAGE, "train",
                )  # fmt: skip
                assert started.returncode == 0, started.stderr
                names.append(name)
            statuses = [engine.run("wait", name, timeout=600).stdout.strip() for name in names]
            logs = "\n".join(_logs(engine, name) for name in names)
        finally:
            if names:
                engine.run("rm", "-f", *names)

    assert statuses == ["0", "0"], logs
    for rank, host in enumerate(hosts):
        assert (roots[host] / "output" / "success").is_file()
        assert (roots[host] / "model" / f"rank-{rank}").read_text() == f"{host} 2"
