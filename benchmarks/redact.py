"""Masking throughput: ``Masker.mask`` on one long line, realistic and adversarial.

Every process smtk runs has its output masked line by line (``launch/process.py``), and
logs, failure files and pip output go through the same code: a line of 10 MB (a printed
tensor, a base64 blob, a JSON dump) must not stall the pump. The target is linear time
with a low constant: a 10 MB line in under 0.2 s, and time(10 MB)/time(1 MB) <= 12.

Each case is one line of 1 KB, 1 MB and 10 MB, masked by a ``Masker`` that knows no
values, and by one that knows 5 (3 of them present in the realistic lines, each a few
times). Printed: the best of ``--repeat`` runs (seconds and MB/s) and the ratio
time(10 MB)/time(1 MB). Cases:

- realistic: ``log`` (training-log text: ``step=.. loss=.. tokens/s=.. max_tokens=..``,
  paths, a URL, JSON fragments; the "5 values" line also holds a ``password=``, a URL
  with credentials and a bearer token), ``base64`` (``data="<one base64 blob>"``);
  the 0.2 s target applies to these;
- adversarial: long runs of one word character, ``tokentoken...``, ``a://a://...``,
  ``eyJeyJ...``, 10 MB of ``=``, ``:`` or spaces, a secret word repeated
  (``passwordpassword...``), and shapes that make every occurrence a candidate
  (``key: key: ...``, ``--token x --token x ...``, ``token="token="...``,
  ``AKIAAKIA...``, ``-----BEGIN PRIVATE KEY-----`` repeated). These must stay linear
  (ratio <= 12); they may be slower than the 0.2 s target.

The OLD implementation (``redact_text`` before the rewrite, copied below as the baseline)
is quadratic on several of these: it runs in a child process per measurement, on 1 KB,
64 KB and 1 MB only, killed after ``--old-timeout`` seconds (shown as ``> N s``).

Usage::

    .venv/bin/python benchmarks/redact.py [--repeat 3] [--old-timeout 20] [--no-old] [--cases log,base64]
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from smtk.redact import Masker  # noqa: E402

KB, MB = 1_000, 1_000_000
SIZES = (("1 KB", KB), ("1 MB", MB), ("10 MB", 10 * MB))
OLD_SIZES = (("1 KB", KB), ("64 KB", 64 * KB), ("1 MB", MB))
TARGET_SECONDS = 0.2
TARGET_RATIO = 12.0

#: Known values; the first three appear in the realistic "5 values" lines.
VALUES = ["hunter2-Secret-77", "s3cr3t-v4lue-xyz", "AbCdEfGh12345678", "zzzz-not-present", "qqqq-absent-1"]


# --- OLD implementation (src/smtk/redact.py before the rewrite), the baseline ----------------
OLD_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s:]+(:[^/@\s]*)?)@")
OLD_INLINE = re.compile(
    r"(?P<name>[A-Za-z0-9_.-]*(?:password|passwd|secret|token|credential|api[_-]?key|access[_-]?key))"
    r"(?![A-Za-z0-9_])(?P<sep>\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&]+)",
    re.I,
)
OLD_SHAPES = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


def old_redact_url(text: str) -> str:
    return OLD_URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}****@", text)


def old_redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    text = old_redact_url(text)
    text = OLD_SHAPES.sub("****", text)
    return OLD_INLINE.sub(lambda m: f"{m.group('name')}{m.group('sep')}****", text)


# --- Inputs ----------------------------------------------------------------------------------


def _fill(size: int, unit: str) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def log_line(size: int, with_secrets: bool) -> str:
    rng = random.Random(1)
    parts = []
    total = 0
    step = 0
    while total < size:
        step += 1
        part = (
            f"step={step} loss={rng.random():.4f} lr=3e-4 tokens/s={rng.randint(1000, 99999)} "
            f"max_tokens=512 grad_norm={rng.random():.3f} epoch: 3 saved /opt/ml/checkpoints/step_{step}.pt "
            f'{{"keys": {step % 7}, "model_name": "llama"}} https://huggingface.co/org/model '
        )
        if with_secrets and step % 500 == 1:
            part += (
                f"db login with {VALUES[0]} password={VALUES[1]} "
                f"https://user:{VALUES[2]}@pypi.example.com/simple Authorization: Bearer abc{step}def "
            )
        parts.append(part)
        total += len(part)
    return "".join(parts)[:size]


def base64_line(size: int, with_secrets: bool) -> str:
    blob = base64.b64encode(random.Random(2).randbytes(size * 3 // 4 + 3)).decode()
    text = ('data="' + blob)[: size - 1] + '"'
    if with_secrets:
        step = max(len(text) // 4, 1)
        for index, value in enumerate(VALUES[:3]):
            at = step * (index + 1)
            text = text[:at] + value + text[at + len(value) :]
    return text


REALISTIC: dict[str, Callable[[int, bool], str]] = {"log": log_line, "base64": base64_line}
ADVERSARIAL: dict[str, str] = {
    "aaaa...": "a",
    "tokentoken...": "token",
    "a://a://...": "a://",
    "eyJeyJ...": "eyJ",
    "=====...": "=",
    ":::::...": ":",
    "spaces": " ",
    "passwordpassword...": "password",
    "key: key: ...": "key: ",
    "--token x ...": "--token x ",
    'token="token="...': 'token="',
    "AKIAAKIA...": "AKIA",
    "BEGIN PRIVATE KEY...": "-----BEGIN PRIVATE KEY-----",
}


def make(case: str, size: int, with_secrets: bool) -> str:
    if case in REALISTIC:
        return REALISTIC[case](size, with_secrets)
    return _fill(size, ADVERSARIAL[case])


# --- Measuring -------------------------------------------------------------------------------


def best_of(function: Callable[[str], str], text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - start)
    return best


def old_child(case: str, size: int, with_values: bool, repeat: int) -> None:
    """Runs in a child process: prints the best time of the OLD implementation."""
    text = make(case, size, with_values)
    values = VALUES if with_values else []
    print(best_of(lambda t: old_redact_text(t, values), text, repeat))


def old_seconds(case: str, size: int, with_values: bool, repeat: int, timeout: float) -> float | None:
    argv = [sys.executable, __file__, "--old-child", case, str(size), str(int(with_values)), str(repeat)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(done.stdout.strip())


def fmt(seconds: float | None, size: int, timeout: float) -> str:
    if seconds is None:
        return f"{'> ' + format(timeout, 'g') + ' s':>11} {'':>9}"
    return f"{seconds:11.4f} {size / MB / seconds if seconds else float('inf'):9.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept (default 3)")
    parser.add_argument("--old-timeout", type=float, default=20.0, help="seconds per OLD measurement")
    parser.add_argument("--no-old", action="store_true", help="skip the OLD implementation")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--old-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.old_child:
        case, size, with_values, repeat = args.old_child
        old_child(case, int(size), with_values == "1", int(repeat))
        return 0
    cases = [*REALISTIC, *ADVERSARIAL]
    if args.cases:
        cases = [c for c in cases if c in args.cases.split(",")]
    failures = []
    print(f"NEW Masker.mask, best of {args.repeat}: seconds and MB/s per size; ratio = t(10 MB)/t(1 MB)")
    print(f"targets: realistic 10 MB < {TARGET_SECONDS} s; every case ratio <= {TARGET_RATIO:g}")
    header = "".join(f" {label + ' s':>11} {'MB/s':>9}" for label, _ in SIZES)
    print(f"{'case':<22} {'values':<7}{header} {'ratio':>6}  verdict")
    for case in cases:
        for with_values in (False, True):
            masker = Masker(VALUES if with_values else ())
            times = []
            for _, size in SIZES:
                times.append(best_of(masker.mask, make(case, size, with_values), args.repeat))
            ratio = times[2] / times[1]
            ok = ratio <= TARGET_RATIO and (case not in REALISTIC or times[2] < TARGET_SECONDS)
            if not ok:
                failures.append(f"{case} ({'5' if with_values else 'no'} values)")
            cells = "".join(f" {fmt(t, size, 0)}" for t, (_, size) in zip(times, SIZES, strict=True))
            kind = "realistic" if case in REALISTIC else "adversarial"
            print(
                f"{case:<22} {'5' if with_values else 'none':<7}{cells} {ratio:6.1f}  {kind} {'ok' if ok else 'MISSED'}"
            )
    if not args.no_old:
        print()
        print(
            f"OLD redact_text (before the rewrite; quadratic): child process per measurement, "
            f"best of {args.repeat}, killed after {args.old_timeout:g} s; 1 KB, 64 KB and 1 MB only"
        )
        header = "".join(f" {label + ' s':>11} {'MB/s':>9}" for label, _ in OLD_SIZES)
        print(f"{'case':<22} {'values':<7}{header} {'t(1MB)/t(64KB)':>15}")
        for case in cases:
            for with_values in (False, True):
                times_old: list[float | None] = []
                for _, size in OLD_SIZES:
                    slow = bool(times_old) and times_old[-1] is None
                    times_old.append(
                        None if slow else old_seconds(case, size, with_values, args.repeat, args.old_timeout)
                    )
                cells = "".join(
                    f" {fmt(t, size, args.old_timeout)}"
                    for t, (_, size) in zip(times_old, OLD_SIZES, strict=True)
                )
                grow = (
                    f"{times_old[2] / times_old[1]:15.1f}"
                    if times_old[1] and times_old[2] is not None
                    else f"{'-':>15}"
                )
                print(f"{case:<22} {'5' if with_values else 'none':<7}{cells} {grow}")
        print("(linear would be ~15.6 for 1 MB / 64 KB; quadratic ~244)")
    print()
    print("all targets met" if not failures else "targets missed: " + ", ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
