"""GPU, CPU and Neuron-core counts of this container.

Each probe runs at most once per process (the results are cached) and a missing
tool means 0, never an error:

- GPUs: ``nvidia-smi --list-gpus``, then narrowed by ``NVIDIA_VISIBLE_DEVICES`` and
  ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-``/``MIG-`` UUIDs, as CUDA reads them).
- CPUs: the CPUs this process may run on (affinity), capped by the cgroup CPU quota
  (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), rounded up, at least 1.
- Neuron cores: ``neuron-ls -j``, summing ``nc_count`` (64 on ``trn2.48xlarge``, as the
  reference hard-codes).

The visibility variables are applied on every call, from the environment passed in,
so the same cached listing serves several environments.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger("smtk")

PROBE_TIMEOUT_S = 20.0
_GPU_LINE = re.compile(r"^GPU (\d+):.*?(?:\(UUID: ([^)]+)\))?\s*$")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str | None


def _run_probe(argv: list[str]) -> str | None:
    """stdout of ``argv``, or ``None`` if the tool is absent, fails or hangs."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("%s not usable (%s); counting 0", argv[0], exc)
        return None
    if proc.returncode != 0:
        logger.info(
            "%s exited with status %d; counting 0 (%s)",
            argv[0],
            proc.returncode,
            (proc.stderr or proc.stdout).strip()[:200],
        )
        return None
    return proc.stdout


@functools.cache
def list_gpus() -> tuple[GpuInfo, ...]:
    """The GPUs ``nvidia-smi`` sees (cached for the life of the process)."""
    out = _run_probe(["nvidia-smi", "--list-gpus"])
    if out is None:
        return ()
    gpus = []
    for line in out.splitlines():
        match = _GPU_LINE.match(line.strip())
        if match:
            gpus.append(GpuInfo(int(match.group(1)), match.group(2)))
    return tuple(gpus)


def _visible(gpus: tuple[GpuInfo, ...], spec: str) -> tuple[GpuInfo, ...]:
    """Apply one ``*_VISIBLE_DEVICES`` value the way the CUDA runtime does."""
    text = spec.strip()
    if text.lower() in ("all",):
        return gpus
    if text.lower() in ("", "none", "void", "nodevfiles"):
        return ()
    chosen: list[GpuInfo] = []
    for token in (t.strip() for t in text.split(",")):
        match = None
        if token.lstrip("-").isdigit():
            index = int(token)
            match = next((g for g in gpus if g.index == index), None)
        elif token:
            match = next((g for g in gpus if g.uuid and g.uuid.startswith(token)), None)
        if match is None:
            # CUDA stops at the first entry it cannot resolve (e.g. "-1").
            break
        if match not in chosen:
            chosen.append(match)
    return tuple(chosen)


def gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use."""
    env = os.environ if environ is None else environ
    gpus = list_gpus()
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if var in env:
            gpus = _visible(gpus, env[var])
    return len(gpus)


def _cgroup_quota(cgroup_root: str, proc_cgroup: str) -> float | None:
    """CPUs allowed by the tightest quota on this process's cgroup path, or ``None``."""
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2].lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            candidates = _ancestors(os.path.join(cgroup_root, path), cgroup_root)
            limits.extend(q for c in candidates if (q := _v2_quota(c)) is not None)
        elif "cpu" in controllers.split(","):
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                base = os.path.join(cgroup_root, mount)
                if os.path.isdir(base):
                    candidates = _ancestors(os.path.join(base, path), base)
                    limits.extend(q for c in candidates if (q := _v1_quota(c)) is not None)
                    break
    # Containers often see their own cgroup as the root: check it too.
    for probe in (_v2_quota(cgroup_root), _v1_quota(os.path.join(cgroup_root, "cpu"))):
        if probe is not None:
            limits.append(probe)
    return min(limits) if limits else None


def _ancestors(path: str, stop: str) -> list[str]:
    result = []
    current = os.path.normpath(path)
    stop = os.path.normpath(stop)
    while current.startswith(stop):
        result.append(current)
        if current == stop:
            break
        current = os.path.dirname(current)
    return result


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _v2_quota(directory: str) -> float | None:
    text = _read(os.path.join(directory, "cpu.max"))
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period or "100000")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_quota(directory: str) -> float | None:
    quota, period = _read(os.path.join(directory, "cpu.cfs_quota_us")), _read(
        os.path.join(directory, "cpu.cfs_period_us")
    )
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_count(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """CPUs this process can use: affinity capped by the cgroup quota, at least 1."""
    return _cpu_count(cgroup_root, proc_cgroup)


@functools.cache
def _cpu_count(cgroup_root: str, proc_cgroup: str) -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        available = min(available, math.ceil(quota))
    return max(1, available)


def neuron_count(instance_type: str = "") -> int:
    """Neuron cores on this host (0 without ``neuron-ls``)."""
    if "trn2.48xlarge" in instance_type:
        return 64
    return _neuron_cores()


@functools.cache
def _neuron_cores() -> int:
    out = _run_probe(["neuron-ls", "-j"])
    if out is None:
        return 0
    try:
        devices = json.loads(out)
    except ValueError:
        logger.info("neuron-ls -j printed no JSON; counting 0 Neuron cores")
        return 0
    if not isinstance(devices, list):
        return 0
    total = 0
    for device in devices:
        if isinstance(device, dict):
            count = device.get("nc_count", 0)
            if isinstance(count, int) and not isinstance(count, bool):
                total += count
    return total


def clear_cache() -> None:
    """Forget every probe result (for tests and long-lived tools)."""
    list_gpus.cache_clear()
    _cpu_count.cache_clear()
    _neuron_cores.cache_clear()
