"""smtk.local.container without a container engine: the command line, the settings and the
engine detection (fake ``podman``/``docker`` scripts on PATH: the narrowest seam)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtk.errors import ConfigError
from smtk.local.container import engine_args, find_engine, run_argv, run_in_container, tree_mounts
from tests.helpers.jobtree import make_tree


def _fake_engine(bin_dir: Path, name: str, info_status: int) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\n[ "$1" = info ] && exit {info_status}\nexit 0\n')
    path.chmod(0o755)
    return path


def test_argv_passes_variable_names_never_values(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    argv = run_argv(
        "/usr/bin/podman",
        "my-image:1",
        str(root),
        names=["API_TOKEN", "TRAINING_JOB_NAME"],
        name="smtk-1",
        hostname="algo-1",
        options=["--runtime", "runc"],
        extra_args=["-v", "/data:/opt/ml/input/data/train:ro"],
    )

    assert argv[:5] == ["/usr/bin/podman", "run", "--rm", "--name", "smtk-1"]
    assert argv[-2:] == ["my-image:1", "train"]
    assert argv[argv.index("API_TOKEN") - 1 : argv.index("API_TOKEN") + 1] == ["-e", "API_TOKEN"]
    assert argv[argv.index("--hostname") : argv.index("--hostname") + 2] == ["--hostname", "algo-1"]
    # Engine options, then the caller's, both before the image.
    assert (
        argv.index("--runtime") < argv.index("/data:/opt/ml/input/data/train:ro") < argv.index("my-image:1")
    )


def test_tree_is_mounted_part_by_part_and_code_only_when_the_host_has_some(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    assert [dst for _, dst in tree_mounts(str(root))] == [
        "/opt/ml/input",
        "/opt/ml/model",
        "/opt/ml/output",
        "/opt/ml/checkpoints",
    ]
    assert (root / "checkpoints").is_dir()

    with_code = make_tree(tmp_path / "b", code={"train.py": "print(1)\n"})
    mounts = dict((dst, src) for src, dst in tree_mounts(str(with_code)))
    assert mounts["/opt/ml/code"] == str(with_code / "code")


def test_engine_args_split_like_a_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTK_CONTAINER_ARGS", "--runtime runc --ulimit 'nofile=1024:1024'")
    assert engine_args() == ["--runtime", "runc", "--ulimit", "nofile=1024:1024"]
    monkeypatch.delenv("SMTK_CONTAINER_ARGS")
    assert engine_args() == []
    with pytest.raises(ConfigError, match="SMTK_CONTAINER_ARGS"):
        engine_args({"SMTK_CONTAINER_ARGS": "--label 'unclosed"})


def test_find_engine_skips_a_cli_without_a_working_engine(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _fake_engine(bin_dir, "docker", info_status=1)
    assert find_engine({"PATH": str(bin_dir)}) is None

    podman = _fake_engine(bin_dir, "podman", info_status=0)
    assert find_engine({"PATH": str(bin_dir)}) == str(podman)


def test_find_engine_honours_the_setting(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _fake_engine(bin_dir, "podman", info_status=0)
    docker = _fake_engine(bin_dir, "docker", info_status=0)
    assert find_engine({"PATH": str(bin_dir), "SMTK_CONTAINER_ENGINE": "docker"}) == str(docker)
    # The named engine is the only candidate, even when it does not work.
    broken = _fake_engine(tmp_path / "other", "docker", info_status=3)
    assert find_engine({"PATH": str(bin_dir), "SMTK_CONTAINER_ENGINE": str(broken)}) is None


def test_no_engine_is_a_config_error_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("SMTK_CONTAINER_ENGINE", raising=False)
    with pytest.raises(ConfigError, match="SMTK_CONTAINER_ENGINE") as caught:
        run_in_container("img", str(root), environ={})
    assert caught.value.exit_status == 2
