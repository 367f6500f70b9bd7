"""Masking throughput: ``Masker.mask`` on one long line, realistic and adversarial.

Every line a job prints is masked (the output pump), and so are logs, failure files and
pip's output: a line of 10 MB (a printed tensor, a base64 blob, a JSON dump) must not
stall the pump. Target: linear time with a low constant, a 10 MB line in under 0.2 s and
time(10 MB)/time(1 MB) <= 12.

Each case is one line of 1 KB, 1 MB and 10 MB, masked by a ``Masker`` that knows no
values and by one that knows 5 (3 of them present in the realistic lines, each several
times). Printed per size: CPU milliseconds per call (``time.process_time``: on a shared
machine wall-clock time also measures the other processes; ``--wall`` measures that
instead) and MB/s, the best of ``--repeat`` rounds (a
round measures every size in turn, so that a busy spell of the machine hits all alike;
calls on 1 KB are repeated until a measurement takes 20 ms); and the ratio
time(10 MB)/time(1 MB) (10 for linear time; a memory-bound pass over 10 MB, which no
longer fits in this machine's 1 MB L2 cache per core, adds a little). Cases:

- realistic, where the 0.2 s target applies: ``log`` (training-log text:
  ``step=.. loss=.. tokens/s=.. max_tokens=..``, paths, URLs, JSON fragments; with
  values, also ``password=``, a URL with credentials and a bearer token every 500
  steps) and ``base64`` (``data="<one base64 blob>"``);
- adversarial, which must stay linear (ratio <= 12) but may be slower than 0.2 s: one
  word character repeated, ``tokentoken...``, ``a://a://...``, ``eyJeyJ...``, 10 MB of
  ``=``, ``:`` or spaces, a secret word repeated (``passwordpassword...``), and lines
  where every few characters are a secret name with a value to mask (``key: key: ...``,
  ``--token x ...``, ``token="token="...``), ``AKIAAKIA...`` and PEM headers.

The OLD implementation (``redact_text`` before the rewrite, copied below, clearly marked)
is the baseline. It is quadratic on most of these lines, so it runs on 1 KB, 64 KB and
1 MB only, one child process per measurement, killed after ``--old-timeout`` seconds
(shown as ``> N s``; a size is skipped once the one before it timed out).

Usage::

    .venv/bin/python benchmarks/redact.py [--repeat 5] [--old-timeout 10] [--no-old] [--cases log,base64]
"""

from __future__ import annotations

import argparse
import base64
import gc
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

#: Known values; the first three appear in the realistic lines "with values".
VALUES = ["hunter2-Secret-77", "s3cr3t-v4lue-xyz", "AbCdEfGh12345678", "zzzz-not-present", "qqqq-absent-1"]


# --- OLD implementation: src/smtk/redact.py before the rewrite (the baseline) ---------------
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


# --- END of the OLD implementation -----------------------------------------------------------


def _fill(size: int, unit: str) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def log_line(size: int, with_values: bool) -> str:
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
        if with_values and step % 500 == 1:
            part += (
                f"db login with {VALUES[0]} password={VALUES[1]} "
                f"https://user:{VALUES[2]}@pypi.example.com/simple Authorization: Bearer abc{step}def "
            )
        parts.append(part)
        total += len(part)
    return "".join(parts)[:size]


def base64_line(size: int, with_values: bool) -> str:
    blob = base64.b64encode(random.Random(2).randbytes(size * 3 // 4 + 3)).decode()
    text = ('data="' + blob)[: size - 1] + '"'
    if with_values:
        for index, value in enumerate(VALUES[:3]):
            for at in range((index + 1) * len(text) // 8, len(text) - len(value), len(text) // 3 + 1):
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


def make(case: str, size: int, with_values: bool) -> str:
    if case in REALISTIC:
        return REALISTIC[case](size, with_values)
    return _fill(size, ADVERSARIAL[case])


# --- Measuring -------------------------------------------------------------------------------


Clock = Callable[[], float]


def seconds_per_call(
    function: Callable[[str], object], text: str, clock: Clock, calls: int = 0
) -> tuple[float, int]:
    """Seconds per call over ``calls`` calls, and ``calls`` (0: one call, or as many as
    take 20 ms if one takes under 2 ms: 1 KB lines; longer lines are timed one call at a
    time, as they come, each size alike, rather than with caches warmed by the last call)."""
    gc.collect()
    if not calls:
        start = clock()
        function(text)
        first = clock() - start
        calls = max(1, int(0.02 / first)) if first < 0.002 else 1
        if calls == 1:
            return first, calls
    start = clock()
    for _ in range(calls):
        function(text)
    return (clock() - start) / calls, calls


def best_times(function: Callable[[str], object], texts: list[str], repeat: int, clock: Clock) -> list[float]:
    """The best seconds per call for each text, over ``repeat`` rounds that go through all
    the texts in turn (so a busy spell of the machine hits every size alike)."""
    best = [float("inf")] * len(texts)
    calls = [0] * len(texts)
    for _ in range(repeat):
        for index, text in enumerate(texts):
            seconds, calls[index] = seconds_per_call(function, text, clock, calls[index])
            best[index] = min(best[index], seconds)
    return best


def old_child(case: str, size: int, with_values: bool, repeat: int, wall: bool) -> None:
    """Runs in a child process: prints the seconds per call of the OLD implementation."""
    text = make(case, size, with_values)
    values = VALUES if with_values else []
    clock = time.perf_counter if wall else time.process_time
    print(best_times(lambda t: old_redact_text(t, values), [text], repeat, clock)[0])


def old_seconds(case: str, size: int, with_values: bool, wall: bool, timeout: float) -> float | None:
    argv = [sys.executable, __file__, "--old-child", case, str(size), str(int(with_values)), str(int(wall))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(done.stdout.strip())


def cell(seconds: float | None, size: int, timeout: float = 0.0) -> str:
    if seconds is None:
        return f" {'> ' + format(timeout, 'g') + ' s':>11} {'':>7}"
    return f" {seconds * 1000:11.3f} {size / MB / seconds:7.1f}"


def header(sizes: tuple[tuple[str, int], ...]) -> str:
    return "".join(f" {label + ' ms':>11} {'MB/s':>7}" for label, _ in sizes)


def run_new(cases: list[str], repeat: int, wall: bool) -> list[str]:
    clock = time.perf_counter if wall else time.process_time
    kind = "wall-clock" if wall else "CPU"
    print(f"NEW Masker.mask: {kind} milliseconds per call and MB/s; ratio = t(10 MB) / t(1 MB) (linear: 10)")
    print(f"targets: realistic 10 MB < {TARGET_SECONDS} s; every case ratio <= {TARGET_RATIO:g}")
    print(f"{'case':<22} {'values':<6}{header(SIZES)} {'ratio':>6}  verdict")
    missed = []
    for case in cases:
        for with_values in (False, True):
            masker = Masker(VALUES if with_values else ())
            texts = [make(case, size, with_values) for _, size in SIZES]
            times = best_times(masker.mask, texts, repeat, clock)
            ratio = times[2] / times[1]
            realistic = case in REALISTIC
            ok = ratio <= TARGET_RATIO and (not realistic or times[2] < TARGET_SECONDS)
            label = f"{case} ({'5' if with_values else 'no'} values)"
            if not ok:
                missed.append(label)
            cells = "".join(cell(t, size) for t, (_, size) in zip(times, SIZES, strict=True))
            verdict = ("realistic " if realistic else "adversarial ") + ("ok" if ok else "MISSED")
            print(f"{case:<22} {'5' if with_values else 'none':<6}{cells} {ratio:6.1f}  {verdict}")
    return missed


def run_old(cases: list[str], wall: bool, timeout: float) -> None:
    print(
        f"OLD redact_text (before the rewrite, quadratic): {'wall-clock' if wall else 'CPU'} milliseconds, "
        f"one child process per measurement, killed after {timeout:g} s (wall); 1 KB, 64 KB and 1 MB only"
    )
    print(f"{'case':<22} {'values':<6}{header(OLD_SIZES)} {'t(1MB)/t(64KB)':>15}")
    for case in cases:
        for with_values in (False, True):
            times: list[float | None] = []
            for _, size in OLD_SIZES:
                skipped = bool(times) and times[-1] is None
                times.append(None if skipped else old_seconds(case, size, with_values, wall, timeout))
            cells = "".join(cell(t, size, timeout) for t, (_, size) in zip(times, OLD_SIZES, strict=True))
            first, second = times[1], times[2]
            grow = f"{second / first:15.1f}" if first and second is not None else f"{'-':>15}"
            print(f"{case:<22} {'5' if with_values else 'none':<6}{cells} {grow}")
    print("(1 MB / 64 KB is 15.6 for linear time, 244 for quadratic)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds of measurements, best kept (default 5)")
    parser.add_argument("--old-timeout", type=float, default=10.0, help="seconds per OLD measurement (10)")
    parser.add_argument("--no-old", action="store_true", help="skip the OLD implementation")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--wall", action="store_true", help="measure wall-clock time, not CPU time")
    parser.add_argument("--old-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.old_child:
        case, size, with_values, wall = args.old_child
        old_child(case, int(size), with_values == "1", 1, wall == "1")
        return 0
    cases = [*REALISTIC, *ADVERSARIAL]
    if args.cases:
        cases = [c for c in cases if c in args.cases.split(",")]
    missed = run_new(cases, args.repeat, args.wall)
    if not args.no_old:
        print()
        run_old(cases, args.wall, args.old_timeout)
    print()
    print("all targets met" if not missed else "targets missed: " + ", ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
