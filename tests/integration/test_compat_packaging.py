"""How the compat distribution (compat/) installs next to, instead of, or under AWS's package.

The compat distribution is named ``sagemaker-training`` (version ``5.1.4+smtk...``), so
pip treats it and AWS's package as one project. These tests run real pip (``.venv``'s,
with ``--python`` into a throwaway venv, offline from a folder of wheels) and check that:

- a framework toolkit requiring ``sagemaker-training>=5,<6`` is satisfied by it, even
  with newer AWS releases on offer: pip installs nothing else, so AWS's package is never
  pulled in on top of smtk;
- asking for ``sagemaker-training==5.1.4`` keeps it (PEP 440: the local version matches);
- replacing one by the other (``--upgrade``, ``--force-reinstall ===5.1.4``, or installing
  the compat distribution over AWS's) is pip's whole-distribution uninstall, printed
  ("Found existing installation ..."), never a mixture of files;
- a constraint pinning the compat version makes a replacement fail loudly;
- ``pip install smtk`` alone provides no ``sagemaker_training`` package.

"AWS's package" here is a stand-in wheel with the same name (5.1.4 and 5.2.0), and
``smtk`` a stand-in for the resolver: the real ones need a compiler or the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip"]
COMPAT_VERSION = "5.1.4+smtk.0.1.0"


def project(path: Path, name: str, version: str, package: str, body: str, requires: str = "") -> Path:
    """A tiny setuptools project at ``path`` (one package, one module)."""
    (path / package).mkdir(parents=True)
    (path / package / "__init__.py").write_text(body)
    deps = f"dependencies = [{requires!r}]" if requires else "dependencies = []"
    (path / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=68"]\n'
        'build-backend = "setuptools.build_meta"\n'
        "[project]\n"
        f'name = "{name}"\nversion = "{version}"\n{deps}\n'
        "[tool.setuptools]\n"
        f'packages = ["{package}"]\n'
    )
    return path


def build(source: Path, wheels: Path) -> None:
    subprocess.run(
        [
            *PIP,
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("compat-wheels")
    out = base / "wheels"
    # A copy: building writes build/ and *.egg-info next to the sources.
    compat = base / "compat"
    shutil.copytree(REPO / "compat", compat, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    build(compat, out)
    for version in ("5.1.4", "5.2.0"):
        aws = project(
            base / f"aws-{version}", "sagemaker-training", version, "sagemaker_training", "ORIGIN = 'aws'\n"
        )
        build(aws, out)
    # smtk itself, for the resolver only (the compat distribution requires smtk==0.1.0).
    build(project(base / "smtk", "smtk", "0.1.0", "smtk_stand_in", ""), out)
    toolkit = project(
        base / "toolkit",
        "fake-framework-toolkit",
        "1.0",
        "fake_toolkit",
        "",
        "sagemaker-training>=5.0.0,<6.0.0",
    )
    build(toolkit, out)
    return out


def pip_into(env: Path, wheels: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Real pip, into ``env``, offline from ``wheels`` (``--no-deps`` only where asked)."""
    return subprocess.run(
        [
            *PIP,
            "--python",
            str(env / "bin" / "python"),
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            *args,
        ],
        capture_output=True,
        text=True,
        check=check,
    )


def installed(env: Path) -> tuple[str, list[str]]:
    """The installed ``sagemaker-training`` version and the package's module files."""
    code = (
        "import importlib.metadata as m, pathlib, sagemaker_training as s;"
        "print(m.version('sagemaker-training'));"
        "print(' '.join(sorted(p.name for p in pathlib.Path(s.__file__).parent.glob('*.py'))))"
    )
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    version, files = out.stdout.strip().splitlines()
    return version, files.split()


@pytest.fixture
def env(tmp_path: Path) -> Path:
    path = tmp_path / "venv"
    venv.create(path, with_pip=False)
    return path


def test_a_toolkit_installs_on_top_without_pulling_the_real_package(env: Path, wheels: Path) -> None:
    pip_into(env, wheels, "sagemaker-training==" + COMPAT_VERSION)
    # AWS's 5.1.4 and 5.2.0 are both on offer; the installed compat version satisfies the toolkit.
    result = pip_into(env, wheels, "fake-framework-toolkit")
    assert "Successfully installed fake-framework-toolkit-1.0\n" in result.stdout, result.stdout
    version, files = installed(env)
    assert version == COMPAT_VERSION and "entry_point.py" in files and "_launch.py" in files


def test_asking_for_the_reference_version_keeps_it(env: Path, wheels: Path) -> None:
    # PEP 440: ==5.1.4 matches the local version 5.1.4+smtk..., so nothing is replaced.
    pip_into(env, wheels, "sagemaker-training==" + COMPAT_VERSION)
    result = pip_into(env, wheels, "sagemaker-training==5.1.4")
    assert "Requirement already satisfied: sagemaker-training==5.1.4 in" in result.stdout
    assert installed(env)[0] == COMPAT_VERSION


@pytest.mark.parametrize(
    "request_args",
    [["--upgrade", "sagemaker-training"], ["--force-reinstall", "--no-deps", "sagemaker-training===5.1.4"]],
)
def test_the_real_package_replaces_it_whole_and_says_so(
    env: Path, wheels: Path, request_args: list[str]
) -> None:
    pip_into(env, wheels, "sagemaker-training==" + COMPAT_VERSION)
    result = pip_into(env, wheels, *request_args)
    assert f"Found existing installation: sagemaker-training {COMPAT_VERSION}" in result.stdout
    assert f"Successfully uninstalled sagemaker-training-{COMPAT_VERSION}" in result.stdout
    version, files = installed(env)
    assert version in ("5.1.4", "5.2.0") and files == ["__init__.py"]  # no file of ours left behind


def test_installing_it_over_the_real_package_replaces_it_whole_and_says_so(env: Path, wheels: Path) -> None:
    pip_into(env, wheels, "sagemaker-training===5.1.4")
    result = pip_into(env, wheels, "sagemaker-training==" + COMPAT_VERSION)
    assert "Found existing installation: sagemaker-training 5.1.4" in result.stdout
    assert "Successfully uninstalled sagemaker-training-5.1.4" in result.stdout
    version, files = installed(env)
    assert version == COMPAT_VERSION and "entry_point.py" in files
    init = next((env / "lib").glob("python3*/site-packages/sagemaker_training/__init__.py"))
    assert "ORIGIN" not in init.read_text()  # AWS's file went with its distribution


def test_a_constraint_makes_any_replacement_fail_loudly(env: Path, wheels: Path, tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"sagemaker-training=={COMPAT_VERSION}\n")
    pip_into(env, wheels, "sagemaker-training==" + COMPAT_VERSION)
    result = pip_into(env, wheels, "-c", str(constraints), "sagemaker-training==5.2.0", check=False)
    assert result.returncode != 0
    assert "sagemaker-training" in result.stderr
    assert installed(env)[0] == COMPAT_VERSION


def test_smtk_alone_has_no_sagemaker_training_package() -> None:
    # .venv has smtk (editable) and not the compat distribution.
    code = "import importlib.util as u; print(u.find_spec('sagemaker_training'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'where = ["src"]' in pyproject and not (REPO / "src" / "sagemaker_training").exists()
