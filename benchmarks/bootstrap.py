"""Distributed bootstrap: time from starting every host to the user's first line.

For 2 and 3 hosts (network namespaces, root only), each round starts on every host
at once either smtk's ``train`` (torchrun launcher: readiness, plan, rank wrapper) or
bare ``python -m torch.distributed.run`` with the same script in the same namespaces,
and measures the time until every rank has printed its first line. Prints the median
of the rounds, the ratio smtk / bare and the difference (target: smtk adds < 1 s).

    sudo .venv/bin/python benchmarks/bootstrap.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from smtk.local import netns

SCRIPT = """print("FIRST LINE", flush=True)
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
"""
PORT = 29511


def _tree(base: Path, host: str, hosts: list[str]) -> Path:
    root = base / host / "opt" / "ml"
    for sub in ("input/config", "code", "model", "output"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    hps = {"sagemaker_program": '"train.py"', "sagemaker_torch_distributed_enabled": "true"}
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    resource = {"current_host": host, "hosts": hosts, "network_interface_name": "eth0"}
    (root / "input/config/resourceconfig.json").write_text(json.dumps(resource))
    (root / "code/train.py").write_text(SCRIPT)
    return root


def _time_to_first_lines(
    spaces: netns.Namespaces, commands: dict[str, list[str]], env: dict[str, str]
) -> float:
    started = time.monotonic()
    seen: dict[str, float] = {}
    procs = {}
    for host, argv in commands.items():
        procs[host] = spaces.popen(host, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def watch(host: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if raw.rstrip().endswith(b"FIRST LINE") and host not in seen:
                seen[host] = time.monotonic() - started

    threads = [threading.Thread(target=watch, args=item) for item in procs.items()]
    for thread in threads:
        thread.start()
    for host, proc in procs.items():
        if proc.wait(300) != 0:
            raise SystemExit(f"{host} failed (exit status {proc.returncode})")
    for thread in threads:
        thread.join()
    if len(seen) != len(commands):
        raise SystemExit(f"no first line from {sorted(set(commands) - set(seen))}")
    return max(seen.values())


def measure(n: int, rounds: int) -> tuple[float, float]:
    hosts = [f"algo-{i + 1}" for i in range(n)]
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="smtk-bench-") as tmp:
        base = Path(tmp)
        roots = {host: _tree(base, host, hosts) for host in hosts}
        (base / "ns").mkdir()
        with netns.Namespaces(hosts, str(base / "ns")) as spaces:
            for host in hosts:
                spaces.bind_tree(host, str(roots[host]))
            env = {
                "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": os.environ.get("HOME", "/root"),
                "SAGEMAKER_BASE_DIR": spaces.mount_point,
                "SMTK_MASTER_PORT": str(PORT),
                "PYTHONUNBUFFERED": "1",
            }
            code = os.path.join(spaces.mount_point, "code", "train.py")
            smtk_cmd = {h: [python, "-m", "smtk.train"] for h in hosts}
            bare_cmd = {
                h: [
                    python, "-m", "torch.distributed.run", "--nnodes", str(n), "--node-rank", str(i),
                    "--master-addr", "algo-1", "--master-port", str(PORT), "--nproc-per-node", "1",
                    "--monitor-interval", "0.1", code,
                ]
                for i, h in enumerate(hosts)
            }  # fmt: skip
            smtk_times, bare_times = [], []
            for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
                bare_times.append(_time_to_first_lines(spaces, bare_cmd, env))
                smtk_times.append(_time_to_first_lines(spaces, smtk_cmd, env))
    return statistics.median(smtk_times), statistics.median(bare_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    why = netns.available()
    if why is not None:
        print(f"skipped: {why}")
        return 0
    print(f"{'hosts':>5}  {'smtk train':>10}  {'bare torchrun':>13}  {'ratio':>6}  {'smtk adds':>9}")
    for n in (2, 3):
        smtk_s, bare_s = measure(n, args.rounds)
        print(f"{n:>5}  {smtk_s:>9.2f}s  {bare_s:>12.2f}s  {smtk_s / bare_s:>6.2f}  {smtk_s - bare_s:>8.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
