"""requirements.txt and package installs with real pip, offline.

Installs go into a throw-away interpreter (a venv made with ``--without-pip`` whose
``.pth`` file borrows pip and setuptools from the test venv), so the shared test venv
is never changed. Nothing here needs the network: successful installs use
``--no-index --no-build-isolation`` on local packages; failing ones point pip at a
closed port on loopback.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import stat
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import venv
from pathlib import Path

import pytest

from smtk import log
from smtk.entry_point import resolve
from smtk.environment import Environment
from smtk.errors import InstallError
from smtk.install import install_requirements, pip_error, url_credentials
from smtk.launch.plain import entry_argv
from smtk.stop import Stop, Stopped
from tests.helpers.jobtree import make_tree
from tests.helpers.processes import hanging_setup_py, pid_alive

logger = logging.getLogger("smtk")

OFFLINE = "--no-index --no-build-isolation"
#: pip settings that make a refused connection fail at once instead of retrying.
FAST_FAIL = {"PIP_RETRIES": "0", "PIP_TIMEOUT": "5"}


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter of its own, sharing (read-only) the test venv's pip and setuptools."""
    target = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(target)
    exe = target / "bin" / "python"
    site = subprocess.run(
        [str(exe), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(exe)


def local_package(base: Path, name: str, *, pyproject: bool = False, module_body: str = "") -> None:
    """A tiny setuptools project ``name`` in ``base`` with one module ``name``."""
    base.mkdir(parents=True, exist_ok=True)
    (base / f"{name}.py").write_text(module_body or f"VALUE = {name!r}\n")
    if pyproject:
        (base / "pyproject.toml").write_text(
            textwrap.dedent(
                f"""\
                [build-system]
                requires = ["setuptools"]
                build-backend = "setuptools.build_meta"

                [project]
                name = "{name}"
                version = "0.1"

                [tool.setuptools]
                py-modules = ["{name}"]
                """
            )
        )
    else:
        (base / "setup.py").write_text(
            f"from setuptools import setup\nsetup(name={name!r}, version='0.1', py_modules=[{name!r}])\n"
        )


def job(tmp_path: Path, program: str, code: dict[str, str], **environ: str) -> Environment:
    root = make_tree(tmp_path / "job", code=code)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SAGEMAKER_PROGRAM": program,
    }
    env.update(environ)
    return Environment(root=root, environ=env)


def importable(python: str, module: str, cwd: Path) -> str | None:
    """``module.VALUE`` as seen by ``python`` started in ``cwd``; None if it cannot import."""
    result = subprocess.run(
        [python, "-c", f"import {module}; print({module}.VALUE)"],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def test_requirements_install_offline(tmp_path: Path, python: str) -> None:
    name = f"smtk_req_{os.getpid()}"
    env = job(
        tmp_path,
        "train.py",
        {"train.py": "", "requirements.txt": "./localpkg\n"},
        SMTK_PIP_ARGS=OFFLINE,
    )
    local_package(Path(env.paths.code_dir) / "localpkg", name)
    entry = resolve(env)
    report = install_requirements(env, entry, python)
    assert report is not None
    assert report.kind == "requirements"
    assert report.command == (
        python,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-build-isolation",
        "-r",
        "requirements.txt",
    )
    assert importable(python, name, tmp_path) == name
    assert importable(sys.executable, name, tmp_path) is None  # the shared venv is untouched


def test_a_stop_ends_a_long_install_with_every_process_it_started(tmp_path: Path, python: str) -> None:
    # A build that hangs (and ignores SIGTERM) must not hold a stopping job: pip's whole
    # group is stopped at once and the install reports the signal.
    env = job(
        tmp_path,
        "train.py",
        {"train.py": "", "requirements.txt": "./slowpkg\n"},
        SMTK_PIP_ARGS=OFFLINE,
    )
    pid_file = tmp_path / "build.pid"
    package = Path(env.paths.code_dir) / "slowpkg"
    package.mkdir()
    (package / "setup.py").write_text(hanging_setup_py(pid_file))
    stop = Stop()
    stop_at: list[float] = []

    def stop_once_building() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        stop_at.append(time.monotonic())
        stop.request(signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_building, daemon=True)
    stopper.start()
    with pytest.raises(Stopped) as info:
        install_requirements(env, resolve(env), python, stop=stop)
    took = time.monotonic() - stop_at[0]
    assert info.value.signum == signal.SIGTERM
    assert took < 10, f"the install took {took:.1f}s to stop"
    build = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(build) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(build), "the build that ignored SIGTERM outlived the stop"


def test_a_stop_before_the_install_runs_nothing(tmp_path: Path, python: str) -> None:
    env = job(tmp_path, "train.py", {"train.py": "", "requirements.txt": "./nothing-here\n"})
    stop = Stop()
    stop.request(signal.SIGINT)
    with pytest.raises(Stopped) as info:
        install_requirements(env, resolve(env), python, stop=stop)
    assert info.value.signum == signal.SIGINT
    assert not (Path(env.paths.code_dir) / "nothing-here").exists()


def test_failing_requirements_carry_pips_error_without_the_password(
    tmp_path: Path, python: str, smtk_written: io.StringIO
) -> None:
    requirements = "--index-url http://user:s3cret@127.0.0.1:9/simple\nsmtk-no-such-package==1.0\n"
    env = job(tmp_path, "train.py", {"train.py": "", "requirements.txt": requirements}, **FAST_FAIL)
    with pytest.raises(InstallError) as info:
        install_requirements(env, resolve(env), python)
    message = str(info.value)
    assert message.startswith("ERROR: "), message
    assert "No matching distribution found for smtk-no-such-package==1.0" in message
    assert "pip exited with status 1" in message
    assert info.value.exit_status == 3
    logger.error("%s", info.value)  # as train reports it
    logged = smtk_written.getvalue()
    assert "pip: " in logged and "smtk-no-such-package" in logged and "pip exited with status 1" in logged
    assert "s3cret" not in logged and "s3cret" not in log.masker().mask(message)


def test_credentials_in_smtk_pip_args_are_masked(
    tmp_path: Path, python: str, smtk_written: io.StringIO
) -> None:
    env = job(
        tmp_path,
        "train.py",
        {"train.py": "", "requirements.txt": "smtk-no-such-package\n"},
        SMTK_PIP_ARGS="--index-url http://tok-only-s3cret@127.0.0.1:9/simple",
        PIP_EXTRA_INDEX_URL="http://u:env-s3cret@127.0.0.1:9/extra",
        **FAST_FAIL,
    )
    with pytest.raises(InstallError) as info:
        install_requirements(env, resolve(env), python)
    message = str(info.value)
    assert "No matching distribution found for smtk-no-such-package" in message
    assert "command: " in message and "--index-url" in message
    logger.error("%s", info.value)  # as train reports it
    logged = smtk_written.getvalue()
    assert "--index-url" in logged
    for text in (log.masker().mask(message), logged):
        assert "s3cret" not in text


def test_package_entry_point_is_pip_installed(tmp_path: Path, python: str) -> None:
    name = f"smtk_pkg_{os.getpid()}"
    env = job(tmp_path, f"{name}.py", {}, SMTK_PIP_ARGS=OFFLINE)
    code = Path(env.paths.code_dir)
    local_package(
        code, name, module_body="VALUE = 'pkg'\nif __name__ == '__main__':\n    print('ran', VALUE)\n"
    )
    entry = resolve(env)
    assert (entry.kind, entry.module) == ("package", name)
    report = install_requirements(env, entry, python)
    assert report is not None and report.kind == "package"
    assert report.command[-1] == "."
    assert importable(python, name, tmp_path) == "pkg"  # installed: imports from anywhere
    ran = subprocess.run(entry_argv(entry, python), cwd=tmp_path, capture_output=True, text=True, check=True)
    assert ran.stdout == "ran pkg\n"


def test_pyproject_package_with_requirements(tmp_path: Path, python: str) -> None:
    name = f"smtk_pyp_{os.getpid()}"
    dep = f"smtk_dep_{os.getpid()}"
    env = job(tmp_path, f"{name}.py", {"requirements.txt": "./deps/localdep\n"}, SMTK_PIP_ARGS=OFFLINE)
    code = Path(env.paths.code_dir)
    local_package(code, name, pyproject=True)
    local_package(code / "deps" / "localdep", dep)
    entry = resolve(env)
    assert entry.kind == "package"
    report = install_requirements(env, entry, python)
    assert report is not None
    assert report.command[-3:] == (".", "-r", "requirements.txt")
    assert importable(python, name, tmp_path) == name
    assert importable(python, dep, tmp_path) == dep


def test_broken_package_reports_the_build_error(tmp_path: Path, python: str) -> None:
    setup = "import sys\nsys.stderr.write('setup.py says: boom-4711\\n')\nraise SystemExit(1)\n"
    env = job(tmp_path, "train.py", {"train.py": "", "setup.py": setup}, SMTK_PIP_ARGS=OFFLINE)
    with pytest.raises(InstallError) as info:
        install_requirements(env, resolve(env), python)
    message = str(info.value)
    assert message.startswith("  error: subprocess-exited-with-error\n"), message
    assert "setup.py says: boom-4711" in message[:1024]
    assert "package install failed: pip exited with status 1" in message


def test_skip_setting(tmp_path: Path, python: str) -> None:
    requirements = "--index-url http://127.0.0.1:9/simple\nsmtk-no-such-package\n"
    env = job(
        tmp_path, "train.py", {"train.py": "", "requirements.txt": requirements}, SMTK_SKIP_REQUIREMENTS="1"
    )
    assert install_requirements(env, resolve(env), python) is None


def test_no_requirements_nothing_to_do(tmp_path: Path, python: str) -> None:
    env = job(tmp_path, "train.py", {"train.py": ""})
    assert install_requirements(env, resolve(env), python) is None


def test_shell_entry_point_installs_requirements_and_becomes_executable(tmp_path: Path, python: str) -> None:
    # CONTRACT.md section 4: requirements.txt is installed for every kind of entry point.
    requirements = "--index-url http://127.0.0.1:9/simple\nsmtk-no-such-package\n"
    env = job(tmp_path, "run", {"run": '#!/bin/sh\necho ran "$@"\n', "requirements.txt": requirements})
    script = Path(env.paths.code_dir, "run")
    script.chmod(0o644)
    entry = resolve(env)
    with pytest.raises(InstallError, match="smtk-no-such-package"):
        install_requirements(env, entry, python)
    assert stat.S_IMODE(script.stat().st_mode) == 0o744
    ran = subprocess.run(
        [*entry_argv(entry), "x"], cwd=env.paths.code_dir, capture_output=True, text=True, check=True
    )
    assert ran.stdout == "ran x\n"


def test_missing_interpreter(tmp_path: Path) -> None:
    env = job(tmp_path, "train.py", {"train.py": "", "requirements.txt": "x\n"})
    missing = str(tmp_path / "no-python")
    with pytest.raises(InstallError, match=f"cannot run {missing}"):
        install_requirements(env, resolve(env), missing)


def test_pip_error_picks_error_lines_with_continuations() -> None:
    lines = [
        "Collecting foo",
        "ERROR: Could not find a version that satisfies the requirement foo",
        "ERROR: Exception:",
        "  Traceback line",
        "WARNING: later",
    ]
    assert pip_error(lines) == "\n".join(lines[1:4])
    assert pip_error(["a", "", "b"]) == "a\nb"
    rich = ["Processing ./.", "  error: subprocess-exited-with-error", "  \u00d7 metadata failed", "error: x"]
    assert pip_error(rich) == "\n".join(rich[1:])


def test_url_credentials() -> None:
    text = "-i https://aws:TOKEN123@d.example/simple --extra-index-url http://bare-token@h/x https://plain/x"
    assert url_credentials(text) == {"TOKEN123", "bare-token"}
