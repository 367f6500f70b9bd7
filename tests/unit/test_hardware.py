"""GPU / CPU / Neuron detection with fake tools on PATH, fake cgroup trees and real affinity."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtk import hardware

FOUR_GPUS = "\n".join(
    f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i}{i}{i}{i}aaaa-0000-0000-0000-00000000000{i})"
    for i in range(4)
)
MIG_GPU = (
    "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-abcd0000-0000-0000-0000-000000000000)\n"
    "  MIG 1g.5gb     Device  0: (UUID: MIG-11111111-1111-1111-1111-111111111111)\n"
    "  MIG 1g.5gb     Device  1: (UUID: MIG-22222222-2222-2222-2222-222222222222)"
)
NEURON = json.dumps([{"neuron_device": 0, "nc_count": 2}, {"neuron_device": 1, "nc_count": 2}, {"other": 1}])


def _fake_tool(bindir: Path, name: str, output: str, counter: Path, status: int = 0) -> None:
    """A script that records each invocation (one line in ``counter``) and prints ``output``."""
    script = bindir / name
    script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {counter}\ncat <<'EOF'\n{output}\nEOF\nexit {status}\n")
    script.chmod(0o755)


def _calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counter = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    hardware.clear_cache()
    yield bindir, counter
    hardware.clear_cache()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 4),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 2),
        ({"CUDA_VISIBLE_DEVICES": "3"}, 1),
        ({"CUDA_VISIBLE_DEVICES": ""}, 0),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, 0),
        ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, 1),  # CUDA stops at the first unknown entry
        ({"CUDA_VISIBLE_DEVICES": "0,7"}, 1),
        ({"CUDA_VISIBLE_DEVICES": "1,1"}, 1),
        ({"CUDA_VISIBLE_DEVICES": "GPU-2222"}, 1),  # UUID prefix
        ({"CUDA_VISIBLE_DEVICES": "all"}, 0),  # not a CUDA value: no device
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, 4),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, 0),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, 0),
        ({"NVIDIA_VISIBLE_DEVICES": ""}, 0),
        ({"NVIDIA_VISIBLE_DEVICES": "2,3"}, 2),  # the runtime renumbers: cap, do not match indices
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-1111aaaa-0000-0000-0000-000000000001,GPU-nope"}, 1),
        ({"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
        ({"NVIDIA_VISIBLE_DEVICES": "0", "CUDA_VISIBLE_DEVICES": "0,1,2"}, 1),
    ],
)
def test_gpu_count_respects_visibility(
    fake_bin: tuple[Path, Path], environ: dict[str, str], expected: int
) -> None:
    bindir, counter = fake_bin
    _fake_tool(bindir, "nvidia-smi", FOUR_GPUS, counter)
    assert hardware.gpu_count(environ) == expected
    assert hardware.gpu_count(environ) == expected
    assert _calls(counter) == 1


def test_mig_devices(fake_bin: tuple[Path, Path]) -> None:
    bindir, counter = fake_bin
    _fake_tool(bindir, "nvidia-smi", MIG_GPU, counter)
    assert hardware.gpu_count({}) == 1
    assert hardware.gpu_count({"CUDA_VISIBLE_DEVICES": "MIG-22222222"}) == 1
    assert hardware.gpu_count({"CUDA_VISIBLE_DEVICES": "MIG-33333333"}) == 0


@pytest.mark.parametrize(
    ("output", "status"),
    [("", 0), ("NVIDIA-SMI has failed because it couldn't communicate with the driver", 9), ("garbage", 0)],
)
def test_broken_nvidia_smi_means_zero(fake_bin: tuple[Path, Path], output: str, status: int) -> None:
    bindir, counter = fake_bin
    _fake_tool(bindir, "nvidia-smi", output, counter, status)
    assert hardware.gpu_count({}) == 0
    assert _calls(counter) == 1


def test_missing_tools_mean_zero(fake_bin: tuple[Path, Path]) -> None:
    assert hardware.gpu_count({}) == 0
    assert hardware.neuron_count("ml.trn1.32xlarge") == 0


def test_neuron_cores(fake_bin: tuple[Path, Path]) -> None:
    bindir, counter = fake_bin
    _fake_tool(bindir, "neuron-ls", NEURON, counter)
    assert hardware.neuron_count("ml.trn1.2xlarge") == 4
    assert hardware.neuron_count("ml.trn1.2xlarge") == 4
    assert hardware.neuron_count("ml.trn2.48xlarge") == 64  # hard-coded, as the reference
    assert _calls(counter) == 1


@pytest.mark.parametrize(("output", "status"), [("not json", 0), ('{"nc_count": 2}', 0), (NEURON, 1)])
def test_broken_neuron_ls_means_zero(fake_bin: tuple[Path, Path], output: str, status: int) -> None:
    bindir, counter = fake_bin
    _fake_tool(bindir, "neuron-ls", output, counter, status)
    assert hardware.neuron_count("") == 0


def test_each_probe_runs_at_most_once_per_process(tmp_path: Path) -> None:
    """Several Environments and direct calls in one process: one nvidia-smi, one neuron-ls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counter = tmp_path / "calls"
    _fake_tool(bindir, "nvidia-smi", FOUR_GPUS, counter)
    _fake_tool(bindir, "neuron-ls", NEURON, counter)
    root = tmp_path / "opt" / "ml"
    code = textwrap.dedent(
        f"""
        import smtk
        from smtk import hardware
        for _ in range(5):
            env = smtk.Environment(root={str(root)!r})
            env.to_env_vars()
            print(env.num_gpus, env.num_neurons, hardware.gpu_count(), hardware.neuron_count(""))
        """
    )
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:5] == ["4 4 4 4"] * 5
    lines = counter.read_text().splitlines()
    assert sorted(line.rsplit("/", 1)[-1] for line in lines) == ["neuron-ls -j", "nvidia-smi --list-gpus"]


def test_no_probe_runs_until_a_count_is_asked_for(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counter = tmp_path / "calls"
    _fake_tool(bindir, "nvidia-smi", FOUR_GPUS, counter)
    _fake_tool(bindir, "neuron-ls", NEURON, counter)
    root = str(tmp_path / "opt" / "ml")
    code = f"import smtk; env = smtk.Environment(root={root!r}); env.hosts; env.hyperparameters"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert _calls(counter) == 0


# -- CPUs --------------------------------------------------------------------------------------


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def _cgroup_tree(tmp_path: Path, files: dict[str, str], self_cgroup: str) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(self_cgroup)
    return str(root), str(proc)


@pytest.mark.parametrize(
    ("files", "self_cgroup", "quota"),
    [
        ({"job/cpu.max": "50000 100000"}, "0::/job\n", 0.5),
        ({"job/cpu.max": "max 100000"}, "0::/job\n", None),
        ({"job/cpu.max": "150000 100000"}, "0::/job\n", 1.5),
        ({"cpu.max": "100000 100000", "job/cpu.max": "max 100000"}, "0::/job\n", 1.0),  # a tighter parent
        ({"job/inner/cpu.max": "20000 100000", "job/cpu.max": "300000 100000"}, "0::/job/inner\n", 0.2),
        ({"job/cpu.max": "garbage"}, "0::/job\n", None),
        ({"unified/job/cpu.max": "50000 100000"}, "1:cpu:/\n0::/job\n", 0.5),  # hybrid hierarchy
        (
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            "4:cpu,cpuacct:/docker/abc\n",
            0.5,
        ),
        (
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            "2:cpu:/\n",
            None,
        ),
        ({}, "garbage line\n", None),
    ],
)
def test_cpu_count_applies_the_cgroup_quota(
    tmp_path: Path, files: dict[str, str], self_cgroup: str, quota: float | None
) -> None:
    cgroup_root, proc_cgroup = _cgroup_tree(tmp_path, files, self_cgroup)
    expected = _affinity() if quota is None else max(1, min(_affinity(), math.ceil(quota)))
    assert hardware.cpu_count(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup) == expected


def test_cpu_count_without_cgroups(tmp_path: Path) -> None:
    assert (
        hardware.cpu_count(cgroup_root=str(tmp_path / "none"), proc_cgroup=str(tmp_path / "none"))
        == _affinity()
    )


def test_cpu_count_respects_affinity_in_a_real_process(tmp_path: Path) -> None:
    """The reference reports the machine's CPUs; smtk what sched_setaffinity allows."""
    code = textwrap.dedent(
        f"""
        import os, smtk
        os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
        env = smtk.Environment(root={str(tmp_path)!r})
        print(env.num_cpus, env.to_env_vars()["SM_NUM_CPUS"], os.cpu_count())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    num_cpus, sm_num_cpus, machine = proc.stdout.split()
    assert (num_cpus, sm_num_cpus) == ("1", "1")
    assert int(machine) >= 1
