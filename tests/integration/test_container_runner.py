"""run_in_container's process handling with a fake engine (a shell script standing in for
podman/docker: the narrowest seam): exit status, values through the environment, and
SIGTERM forwarded as ``<engine> kill --signal`` then escalated to KILL after the grace period.
The real engine is exercised in test_container.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtk.errors import ConfigError
from smtk.local.container import PIP_CACHE, gpu_args, run_in_container
from tests.helpers.jobtree import clean_env, make_tree

#: A container that ignores SIGTERM: "run" waits until "kill --signal KILL" arrives.
STUBBORN_ENGINE = """#!/bin/sh
state={state}
case "$1" in
    run)
        trap '' TERM INT
        touch "$state/running"
        while [ ! -e "$state/killed" ]; do sleep 0.05; done
        exit 137 ;;
    kill)
        echo "$3 $4" >> "$state/signals"
        [ "$3" = KILL ] && touch "$state/killed"
        exit 0 ;;
esac
exit 1
"""


def test_exit_status_and_values_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path)
    seen = tmp_path / "seen"
    engine = tmp_path / "engine"
    engine.write_text(f'#!/bin/sh\nprintf "%s|%s" "$*" "$API_TOKEN" > {seen}\nexit 7\n')
    engine.chmod(0o755)
    monkeypatch.delenv("SMTK_CONTAINER_ARGS", raising=False)
    monkeypatch.setenv("SMTK_LOCAL_PIP_CACHE", "off")

    status = run_in_container(
        "img", str(root), environ={"API_TOKEN": "s3cret"}, engine=str(engine), name="c1"
    )

    assert status == 7
    args, token = seen.read_text().split("|")
    assert token == "s3cret"
    assert "s3cret" not in args
    assert args.startswith("run --rm --name c1 -v ")
    assert args.endswith("-e API_TOKEN img train")


def test_sigterm_is_forwarded_then_escalated_to_kill(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "job")
    state = tmp_path / "state"
    state.mkdir()
    engine = tmp_path / "engine"
    engine.write_text(STUBBORN_ENGINE.format(state=state))
    engine.chmod(0o755)
    runner = (
        "import sys\n"
        "from smtk.local.container import run_in_container\n"
        "sys.exit(run_in_container('img', sys.argv[1], environ={}, engine=sys.argv[2], name='c2',\n"
        "                          stop_timeout=1))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", runner, str(root), str(engine)], env=clean_env())
    try:
        deadline = time.monotonic() + 120
        while not (state / "running").exists():
            assert child.poll() is None, f"runner exited early with {child.returncode}"
            assert time.monotonic() < deadline, "the fake container never started"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        status = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert status == 137
    assert (state / "signals").read_text().splitlines() == ["SIGTERM c2", "KILL c2"]


def test_logged_command_line_has_no_secret_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path)
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/sh\nexit 0\n")
    engine.chmod(0o755)
    # A user who put a secret into the engine options: the value must not reach the log.
    monkeypatch.setenv("SMTK_CONTAINER_ARGS", "--env DB_PASSWORD=hunter2-long --label team=ml")

    with caplog.at_level("INFO", logger="smtk"):
        status = run_in_container(
            "img", str(root), environ={"DB_PASSWORD": "hunter2-long"}, engine=str(engine), name="c3"
        )

    assert status == 0
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("container: ")]
    assert "hunter2-long" not in line
    assert "--label team=ml" in line


#: A container that runs until it is signalled (or 30 s pass: then it "succeeds").
WAITING_ENGINE = """#!/bin/sh
state={state}
case "$1" in
    info) exit 0 ;;
    run)
        n=0
        while [ ! -e "$state/signalled" ]; do
            sleep 0.05
            n=$((n + 1))
            [ $n -gt 600 ] && exit 0
        done
        exit 143 ;;
    kill)
        echo "$3" >> "$state/signals"
        touch "$state/signalled"
        exit 0 ;;
esac
exit 1
"""


def test_smtk_local_image_stops_the_container_at_the_maximum_runtime(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    engine = tmp_path / "engine"
    engine.write_text(WAITING_ENGINE.format(state=state))
    engine.chmod(0o755)
    started = time.monotonic()
    ran = subprocess.run(
        [
            str(Path(sys.executable).parent / "smtk"),
            "local",
            "--image",
            "img",
            "--entry-point",
            "train.py",
            "--job-dir",
            str(tmp_path / "jobs"),
            "--max-run",
            "1",
        ],
        env=clean_env(SMTK_CONTAINER_ENGINE=str(engine)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    assert ran.returncode == 143, ran.stdout + ran.stderr
    assert (state / "signals").read_text().splitlines() == ["SIGTERM"]
    assert "maximum runtime of 1 s reached" in ran.stderr
    assert took < 25


@pytest.mark.parametrize(
    ("engine", "gpus", "expected"),
    [
        ("/usr/bin/docker", "all", ["--gpus", "all"]),
        ("/usr/bin/docker", "2", ["--gpus", "2"]),
        ("/usr/bin/docker", "0, 2", ["--gpus", '"device=0,2"']),
        ("/usr/bin/podman", "all", ["--device", "nvidia.com/gpu=all"]),
        ("/usr/bin/podman", "2", ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]),
        ("podman", "1,3", ["--device", "nvidia.com/gpu=1", "--device", "nvidia.com/gpu=3"]),
        ("/usr/bin/docker", "0", ["--gpus", '"device=0"']),  # device 0, not zero GPUs
        ("podman", "0", ["--device", "nvidia.com/gpu=0"]),
    ],
)
def test_gpus_in_each_engines_form(engine: str, gpus: str, expected: list[str]) -> None:
    assert gpu_args(engine, gpus) == expected


@pytest.mark.parametrize("gpus", ["", "two", "1,,2", "-1", "all,1", "1.5"])
def test_bad_gpus_are_configuration_errors(gpus: str) -> None:
    with pytest.raises(ConfigError, match="--gpus"):
        gpu_args("docker", gpus)


def test_gpus_and_the_shared_pip_cache_reach_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "job")
    seen = tmp_path / "seen"
    engine = tmp_path / "podman"
    engine.write_text(f'#!/bin/sh\nprintf "%s|%s" "$*" "$PIP_CACHE_DIR" > {seen}\nexit 0\n')
    engine.chmod(0o755)
    monkeypatch.setenv("SMTK_LOCAL_PIP_CACHE", str(tmp_path / "pipcache"))
    monkeypatch.delenv("SMTK_CONTAINER_ARGS", raising=False)
    assert run_in_container("img", str(root), environ={}, engine=str(engine), name="c1", gpus="all") == 0
    args, cache_dir = seen.read_text().split("|")
    assert f"-v {tmp_path / 'pipcache'}:{PIP_CACHE}" in args and cache_dir == PIP_CACHE
    assert "-e PIP_CACHE_DIR" in args
    assert "--device nvidia.com/gpu=all img train" in args
    assert (tmp_path / "pipcache").is_dir()
    monkeypatch.setenv("SMTK_LOCAL_PIP_CACHE", "off")
    assert run_in_container("img", str(root), environ={}, engine=str(engine), name="c2") == 0
    assert PIP_CACHE not in seen.read_text() and seen.read_text().endswith("|")


@pytest.mark.parametrize(
    ("message", "advice"),
    [
        (
            "Error: runc: runc create failed: unable to start container process: error during container "
            "init: error setting rlimit type 7: operation not permitted: OCI permission denied",
            "SMTK_CONTAINER_ARGS='--runtime runc --ulimit nofile=1024:1024",
        ),
        ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.",
         "SMTK_CONTAINER_ENGINE=podman"),
        ("Error: repository name not known: image not known", "build it"),
        ('docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].',
         "NVIDIA Container Toolkit"),
        ("Error: setting up CDI devices: unresolvable CDI devices nvidia.com/gpu=all",
         "nvidia-ctk cdi generate"),
    ],
)  # fmt: skip
def test_engine_failures_are_explained(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    smtk_log: pytest.LogCaptureFixture,
    message: str,
    advice: str,
) -> None:
    root = make_tree(tmp_path / "job")
    engine = tmp_path / "engine"
    engine.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 126\n")
    engine.chmod(0o755)
    monkeypatch.setenv("SMTK_LOCAL_PIP_CACHE", "off")
    assert run_in_container("img", str(root), environ={}, engine=str(engine), name="c1") == 126
    assert advice in smtk_log.text


def test_an_engine_message_in_a_successful_run_is_not_blamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtk_log: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path / "job")
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/sh\necho 'my log mentions image not known'\nexit 0\n")
    engine.chmod(0o755)
    monkeypatch.setenv("SMTK_LOCAL_PIP_CACHE", "off")
    assert run_in_container("img", str(root), environ={}, engine=str(engine), name="c1") == 0
    assert "failed" not in smtk_log.text
