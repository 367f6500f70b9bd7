"""Training metrics from the log stream, as SageMaker extracts them: ``MetricDefinitions``.

A job spec's ``AlgorithmSpecification.MetricDefinitions`` (CreateTrainingJob's shape: a
list of ``{"Name": ..., "Regex": ...}``) names each metric and the regular expression
that finds it in the job's output. As on the platform, every line of every host's
output is searched with every expression; the first capture group is the value, read
as a number (lines where it is not one are skipped). ``smtk local`` then prints a table
(last, min, max, count of each metric), writes ``<job dir>/metrics.json`` with every
value and the time it was logged, and, when ``matplotlib`` is installed (the ``plot``
extra), draws ``<job dir>/metrics/<name>.png``: each metric over time, one line per host.

Cost: each line is searched only in its first 4 KiB (a metric line is short; a
multi-megabyte line must not make a pattern's cost explode: a pattern that backtracks
quadratically costs at most milliseconds per line), so the work is linear in
the output. Patterns are the user's own and are compiled with Python's ``re``.

::

    definitions = parse_definitions("spec.json", spec_json["AlgorithmSpecification"]["MetricDefinitions"])
    metrics = Metrics(definitions)
    metrics.feed("algo-1", "epoch 3: loss=0.25")
    print(metrics.table())
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smtk.errors import ConfigError

log = logging.getLogger("smtk")

#: Only this much of a line is searched.
SEARCHED = 4 * 1024
#: The platform's limits: 40 definitions, names up to 255 characters, regexes up to 500.
MAX_DEFINITIONS = 40
_NAME = re.compile(r"[^\s]{1,255}")


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    regex: str

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex)


def parse_definitions(source: str, raw: object) -> tuple[MetricDefinition, ...]:
    """``MetricDefinitions`` from a job spec, checked: names, regexes that compile and capture."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(source, "AlgorithmSpecification.MetricDefinitions", "a list of {Name, Regex}", raw)
    if len(raw) > MAX_DEFINITIONS:
        raise ConfigError(
            source, "AlgorithmSpecification.MetricDefinitions", f"at most {MAX_DEFINITIONS}", len(raw)
        )
    found: list[MetricDefinition] = []
    for index, item in enumerate(raw):
        key = f"AlgorithmSpecification.MetricDefinitions[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(source, key, "an object with Name and Regex", item)
        name, regex = item.get("Name"), item.get("Regex")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(source, f"{key}.Name", "1-255 characters, no spaces", name)
        if not isinstance(regex, str) or not 1 <= len(regex) <= 500:
            raise ConfigError(source, f"{key}.Regex", "a regular expression of 1-500 characters", regex)
        try:
            groups = re.compile(regex).groups
        except re.error as exc:
            raise ConfigError(source, f"{key}.Regex", f"a valid regular expression ({exc})", regex) from exc
        if groups < 1:
            raise ConfigError(
                source, f"{key}.Regex", "a capture group around the value, e.g. loss=(\\S+)", regex
            )
        found.append(MetricDefinition(name, regex))
    return tuple(found)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Sample:
    time: float
    host: str
    value: float


class Metrics:
    """The values found so far, per metric; thread-safe (every host's output pump feeds it)."""

    def __init__(
        self, definitions: Sequence[MetricDefinition], clock: Callable[[], float] = time.time
    ) -> None:
        self.definitions = tuple(definitions)
        self._patterns = [(d.name, d.compiled()) for d in self.definitions]
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: dict[str, list[Sample]] = {d.name: [] for d in self.definitions}

    def feed(self, host: str, line: str) -> None:
        """Look for every metric in one line of ``host``'s output."""
        if not self._patterns:
            return
        text = line[:SEARCHED]
        now = self._clock()
        for name, pattern in self._patterns:
            match = pattern.search(text)
            if match is None:
                continue
            value = _number(match.group(1) or "")
            if value is not None:
                with self._lock:
                    self._samples[name].append(Sample(now, host, value))

    def samples(self, name: str) -> list[Sample]:
        with self._lock:
            return list(self._samples.get(name, ()))

    def table(self) -> str:
        """One line per metric: last, min, max and count (``-`` for a metric never seen)."""
        rows = [f"  {'metric':24} {'last':>12} {'min':>12} {'max':>12} {'count':>7}"]
        for definition in self.definitions:
            values = [s.value for s in self.samples(definition.name)]
            if values:
                cells = [f"{v:12.6g}" for v in (values[-1], min(values), max(values))]
            else:
                cells = [f"{'-':>12}"] * 3
            rows.append(f"  {definition.name[:24]:24} {' '.join(cells)} {len(values):7d}")
        return "\n".join(rows)

    def to_json(self) -> dict[str, object]:
        """``{"metrics": {name: {"regex", "last", "min", "max", "count", "values": [...]}}}``,
        each value as ``[unix time, host, value]``."""
        result: dict[str, object] = {}
        for definition in self.definitions:
            samples = self.samples(definition.name)
            values = [s.value for s in samples]
            result[definition.name] = {
                "regex": definition.regex,
                "count": len(values),
                "last": values[-1] if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "values": [[round(s.time, 3), s.host, s.value] for s in samples],
            }
        return {"metrics": result}

    def write(self, job_dir: str) -> list[str]:
        """Write ``metrics.json`` (and the plots, when matplotlib is installed); the paths written."""
        path = os.path.join(job_dir, "metrics.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, indent=1)
        return [path, *self._plot(os.path.join(job_dir, "metrics"))]

    def _plot(self, directory: str) -> list[str]:
        try:
            import matplotlib

            matplotlib.use("Agg")  # files only, never a window
            import matplotlib.pyplot as plt
        except ImportError:
            return []
        written = []
        for definition in self.definitions:
            samples = self.samples(definition.name)
            if not samples:
                continue
            os.makedirs(directory, exist_ok=True)
            start = samples[0].time
            figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
            for host in sorted({s.host for s in samples}):
                mine = [s for s in samples if s.host == host]
                axes.plot([s.time - start for s in mine], [s.value for s in mine], marker=".", label=host)
            axes.set_title(definition.name)
            axes.set_xlabel("seconds since the first value")
            axes.grid(alpha=0.3)
            if len({s.host for s in samples}) > 1:
                axes.legend()
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", definition.name)
            target = os.path.join(directory, f"{safe}.png")
            figure.savefig(target, bbox_inches="tight")
            plt.close(figure)
            written.append(target)
        return written
