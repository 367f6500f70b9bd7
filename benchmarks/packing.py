"""Packing model.tar.gz: smtk local against the SageMaker SDK's local mode, on the same files.

    python benchmarks/packing.py [--size-mb 2048] [--files 8] [--repeat 3] [--sdk-python PATH]

Writes ``--files`` files of model weights (float32 drawn from a normal distribution, as
trained weights look to a compressor: they hardly compress) totalling ``--size-mb`` MiB,
then packs that directory, each run in a fresh process, alternating:

- ``smtk``: ``smtk.local.artifacts.pack`` as ``smtk local`` runs it (ISA-L's gzip when
  ``isal`` is installed);
- ``smtk, zlib``: the same with ``isal`` hidden, i.e. the standard library's gzip (level 6);
- ``SDK local mode``: ``sagemaker.utils.create_tar_file``, the function the SDK's local
  mode packs ``model.tar.gz`` with (``tarfile`` ``w:gz``: zlib level 9), run with the
  Python that has the ``sagemaker`` package (``--sdk-python``, default ``.venv-ref``).

Prints MB/s (input bytes per second of wall time), the archive's size and the ratio to
the SDK. Target (issue 16): packing 2 GB must not take minutes.
"""

from __future__ import annotations

import argparse
import array
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

SMTK = """
import sys, time
if sys.argv[3] == "zlib":
    sys.modules["isal"] = None  # the standard library's gzip
from smtk.local.artifacts import collect, pack
started = time.perf_counter()
pack(collect([sys.argv[1]]), sys.argv[2], label="bench")
print(time.perf_counter() - started)
"""
SDK = """
import os, sys, time
from sagemaker.utils import create_tar_file
started = time.perf_counter()
create_tar_file([os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])], sys.argv[2])
print(time.perf_counter() - started)
"""


def make_weights(directory: Path, size_mb: int, files: int) -> int:
    """``files`` files of float32 normal weights, ``size_mb`` MiB in all (each a window of one pool)."""
    rng = random.Random(7)
    pool = array.array("f", (rng.gauss(0.0, 0.02) for _ in range(4 * MIB))).tobytes()  # 16 MiB
    per_file = size_mb * MIB // files
    total = 0
    for index in range(files):
        with open(directory / f"model-{index:05d}-of-{files:05d}.safetensors", "wb") as handle:
            written = 0
            while written < per_file:
                start = (index * 4099 + written) % (len(pool) // 2)
                chunk = pool[start : start + min(len(pool) // 2, per_file - written)]
                handle.write(chunk)
                written += len(chunk)
            total += written
    return total


def run(argv: list[str]) -> float:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sdk-python", default=str(REPO / ".venv-ref" / "bin" / "python"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smtk-pack-bench-") as work:
        model = Path(work) / "model"
        model.mkdir()
        total = make_weights(model, args.size_mb, args.files)
        print(
            f"packing {args.files} files of float32 weights, {total / MIB:.0f} MiB; {args.repeat} runs each"
        )
        tools = {
            "smtk": [sys.executable, "-c", SMTK, str(model), "", "isal"],
            "smtk, zlib": [sys.executable, "-c", SMTK, str(model), "", "zlib"],
        }
        check = subprocess.run(
            [args.sdk_python, "-c", "import sagemaker.utils"], capture_output=True, check=False
        )
        if check.returncode == 0:
            tools["SDK local mode"] = [args.sdk_python, "-c", SDK, str(model), ""]
        else:
            print(f"no sagemaker package for {args.sdk_python}: no SDK row (pip install sagemaker there)")
        seconds: dict[str, list[float]] = {name: [] for name in tools}
        sizes: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, template in tools.items():
                target = str(Path(work) / "out.tar.gz")
                seconds[name].append(run([*template[:4], target, *template[5:]]))
                sizes[name] = os.path.getsize(target)
                os.unlink(target)
        baseline = statistics.median(seconds["SDK local mode"]) if "SDK local mode" in seconds else None
        print(f"{'tool':16} {'median s':>9} {'MB/s':>8} {'archive':>12} {'vs SDK':>7}   runs")
        for name, runs in seconds.items():
            median = statistics.median(runs)
            ratio = f"x{baseline / median:.1f}" if baseline else "-"
            rate = total / MIB / median
            print(
                f"{name:16} {median:9.2f} {rate:8.1f} {sizes[name] / MIB:9.1f} MiB {ratio:>7}   "
                + " ".join(f"{r:.2f}" for r in runs)
            )
        smtk = statistics.median(seconds["smtk"])
        verdict = "ok" if smtk < 60 else "MISSED"
        print(f"target: {total / MIB:.0f} MiB packed in well under a minute: smtk {smtk:.1f} s  {verdict}")


if __name__ == "__main__":
    main()
