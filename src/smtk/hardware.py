"""GPU, CPU and Neuron-core counts of this container.

Each probe runs at most once per process (the results are cached) and a missing
tool means 0, never an error:

- GPUs: ``nvidia-smi --list-gpus``, then narrowed by ``NVIDIA_VISIBLE_DEVICES`` and
  ``CUDA_VISIBLE_DEVICES``. The container runtime has already applied
  ``NVIDIA_VISIBLE_DEVICES`` to what ``nvidia-smi`` lists inside a container (and
  renumbered the GPUs from 0), so smtk only honours its "no GPU" values (``none``,
  ``void``, empty), selects by ``GPU-``/``MIG-`` UUID, and caps the count at the length of
  an index list. ``CUDA_VISIBLE_DEVICES`` is applied the way the CUDA runtime reads it:
  indices or UUID prefixes, in order, stopping at the first entry that matches no
  device (so ``-1`` or an empty value hide every GPU); ``MIG-`` UUIDs count one
  device each.
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
from typing import NamedTuple

PROBE_TIMEOUT_S = 20.0
# "GPU 0: NVIDIA A10G (UUID: GPU-...)": the ordinal, then the UUID found with str.find (no
# backtracking over the model name); MIG lines likewise.
_GPU_LINE = re.compile(r"GPU (\d{1,6}):")
_UUID = "(UUID: "


class GpuInfo(NamedTuple):
    """One line of ``nvidia-smi --list-gpus`` (and the MIG devices listed under it)."""

    ordinal: int  # the N of "GPU N:"
    uuid: str | None
    migs: tuple[str, ...] = ()


def _find_tool(name: str) -> str | None:
    """``name`` on ``$PATH``, the way ``execvp`` looks for it, or ``None``."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _run_probe(argv: list[str]) -> str | None:
    """stdout of ``argv``, or ``None`` if the tool is absent, fails or hangs."""
    executable = _find_tool(argv[0])
    if executable is None:
        # The common case on CPU machines: no process, no import of subprocess.
        return None
    logger = logging.getLogger("smtk")
    try:
        proc = subprocess.run(
            [executable, *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("%s not usable (%s); counting 0", argv[0], exc)
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
    return () if out is None else parse_gpu_listing(out)


def parse_gpu_listing(out: str) -> tuple[GpuInfo, ...]:
    """The GPUs (and their MIG devices) in the output of ``nvidia-smi --list-gpus``."""
    gpus: list[GpuInfo] = []
    for line in out.splitlines():
        text = line.strip()
        if match := _GPU_LINE.match(text):
            gpus.append(GpuInfo(int(match.group(1)), _uuid_in(text)))
        elif text.startswith("MIG ") and gpus:
            uuid = _uuid_in(text)
            if uuid is not None and uuid.startswith("MIG-"):
                last = gpus[-1]
                gpus[-1] = GpuInfo(last.ordinal, last.uuid, (*last.migs, uuid))
    return tuple(gpus)


def _uuid_in(text: str) -> str | None:
    """The ``(UUID: ...)`` of a ``nvidia-smi --list-gpus`` line, if it has one."""
    start = text.find(_UUID)
    if start < 0:
        return None
    end = text.find(")", start)
    uuid = text[start + len(_UUID) : end if end >= 0 else None]
    return uuid or None


_HIDDEN = ("", "none", "void", "nodevfiles")


def _nvidia_visible(gpus: tuple[GpuInfo, ...], spec: str) -> int:
    """How many of ``gpus`` the container runtime's ``NVIDIA_VISIBLE_DEVICES`` leaves."""
    text = spec.strip().lower()
    if text == "all":
        return len(gpus)
    if text in _HIDDEN:
        return 0
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if all(t.isdigit() for t in tokens):
        return min(len(gpus), len(set(tokens)))
    return len(_select(gpus, tokens, stop_at_unknown=False))


def _select(gpus: tuple[GpuInfo, ...], tokens: list[str], *, stop_at_unknown: bool) -> list[str]:
    """The device ids (``index`` or MIG UUID) the tokens name, in order, without repeats."""
    chosen: list[str] = []
    for token in tokens:
        found: str | None = None
        if token.isdigit():
            found = next((str(g.ordinal) for g in gpus if g.ordinal == int(token)), None)
        elif token.startswith("MIG-"):
            found = next((m for g in gpus for m in g.migs if m.startswith(token)), None)
        elif token:
            found = next((str(g.ordinal) for g in gpus if g.uuid and g.uuid.startswith(token)), None)
        if found is None:
            if stop_at_unknown:
                break
            continue
        if found not in chosen:
            chosen.append(found)
    return chosen


def gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use (0 without ``nvidia-smi``)."""
    env = os.environ if environ is None else environ
    gpus = list_gpus()
    count = len(gpus)
    if "NVIDIA_VISIBLE_DEVICES" in env:
        count = min(count, _nvidia_visible(gpus, env["NVIDIA_VISIBLE_DEVICES"]))
    if "CUDA_VISIBLE_DEVICES" in env:
        tokens = [t.strip() for t in env["CUDA_VISIBLE_DEVICES"].split(",")]
        count = min(count, len(_select(gpus, tokens, stop_at_unknown=True)))
    return count


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
        if controllers == "":  # cgroup v2; in "hybrid" mode it is mounted at <root>/unified
            for base in (cgroup_root, os.path.join(cgroup_root, "unified")):
                candidates = _ancestors(os.path.join(base, path), base)
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
    while current == stop or current.startswith(stop.rstrip(os.sep) + os.sep):
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
    quota, period = (
        _read(os.path.join(directory, "cpu.cfs_quota_us")),
        _read(os.path.join(directory, "cpu.cfs_period_us")),
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
        logging.getLogger("smtk").info("neuron-ls -j printed no JSON; counting 0 Neuron cores")
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
