"""MetricDefinitions: checked like the API checks them, evaluated like SageMaker evaluates them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from smtk.errors import ConfigError
from smtk.local.metrics import SEARCHED, MetricDefinition, Metrics, parse_definitions


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"Name": "loss"}, "a list of {Name, Regex}"),
        ([{"Name": "loss"}], "MetricDefinitions[0].Regex"),
        ([{"Name": "", "Regex": "loss=(.*)"}], "MetricDefinitions[0].Name"),
        ([{"Name": "has space", "Regex": "loss=(.*)"}], "no spaces"),
        ([{"Name": "loss", "Regex": "loss=\\S+"}], "a capture group"),
        ([{"Name": "loss", "Regex": "loss=(["}], "a valid regular expression"),
        ([{"Name": "loss", "Regex": "x" * 501}], "1-500 characters"),
        ([{"Name": f"m{i}", "Regex": "(x)"} for i in range(41)], "at most 40"),
        (["loss=(.*)"], "an object with Name and Regex"),
    ],
)
def test_bad_definitions_are_configuration_errors(raw: object, words: str) -> None:
    with pytest.raises(ConfigError, match=r"spec\.json") as caught:
        parse_definitions("spec.json", raw)
    assert words in str(caught.value)


def test_good_definitions() -> None:
    raw = [{"Name": "train:loss", "Regex": "loss=([0-9.]+)"}, {"Name": "acc", "Regex": "acc (\\S+)"}]
    assert parse_definitions("spec.json", raw) == (
        MetricDefinition("train:loss", "loss=([0-9.]+)"),
        MetricDefinition("acc", "acc (\\S+)"),
    )
    assert parse_definitions("spec.json", None) == ()


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("epoch 1 loss=0.5", 0.5),
        ("loss=1e-3 and loss=7", 0.001),  # the first match, as SageMaker reads it
        ("loss=-2.5", -2.5),
        ("loss=nan", None),  # not a finite number: skipped
        ("loss=inf", None),
        ("loss=abc", None),
        ("no metric here", None),
        ("loss=", None),
    ],
)
def test_a_line_gives_the_first_groups_number(line: str, value: float | None) -> None:
    metrics = Metrics([MetricDefinition("loss", "loss=(\\S*)")])
    metrics.feed("algo-1", line)
    assert [s.value for s in metrics.samples("loss")] == ([] if value is None else [value])


def test_only_the_start_of_a_huge_line_is_searched() -> None:
    # A pattern whose cost is quadratic in the length of a run of digits: on 8 MB it
    # would take hours; on the first 64 KiB it is bounded.
    metrics = Metrics([MetricDefinition("loss", "(\\d+)x"), MetricDefinition("late", "late=(\\S+)")])
    done = threading.Event()

    def feed() -> None:
        metrics.feed("algo-1", "1" * (8 * 1024 * 1024) + " late=1")
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(120)
    assert metrics.samples("late") == []  # beyond the searched part
    metrics.feed("algo-1", "x" * (SEARCHED - 10) + "late=2")
    assert [s.value for s in metrics.samples("late")] == [2.0]


def test_table_json_and_plot(tmp_path: Path) -> None:
    clock = iter(float(t) for t in range(100, 200))
    metrics = Metrics(
        [MetricDefinition("train:loss", "loss=(\\S+)"), MetricDefinition("never", "never=(\\S+)")],
        clock=lambda: next(clock),
    )
    for host, values in (("algo-1", [1.0, 0.5, 0.25]), ("algo-2", [0.9, 0.4])):
        for value in values:
            metrics.feed(host, f"step loss={value}")
    table = metrics.table().splitlines()
    assert table[1].split() == ["train:loss", "0.4", "0.25", "1", "5"]
    assert table[2].split() == ["never", "-", "-", "-", "0"]
    written = metrics.write(str(tmp_path))
    data = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert data["train:loss"]["count"] == 5 and data["train:loss"]["min"] == 0.25
    assert data["train:loss"]["values"][0] == [100.0, "algo-1", 1.0]
    assert data["never"]["last"] is None
    png = tmp_path / "metrics" / "train_loss.png"
    assert str(png) in written and not (tmp_path / "metrics" / "never.png").exists()
    image = pytest.importorskip("PIL.Image").open(png)
    width, height = image.size
    assert width > 300 and height > 200
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 10  # lines, axes and text, not a blank canvas


@pytest.mark.parametrize("value", [0.25, -3, 1e-8, 12345678.9, float("nan"), float("inf"), 0])
def test_log_metric_is_found_by_its_definition(value: float, capsys: pytest.CaptureFixture[str]) -> None:
    import math

    import smtk

    smtk.log_metric("train:loss", value, step=7)
    out = capsys.readouterr().out
    definition = smtk.metric_definition("train:loss")
    metrics = Metrics(parse_definitions("spec.json", [definition]))
    metrics.feed("algo-1", out.rstrip("\n"))
    found = [s.value for s in metrics.samples("train:loss")]
    assert found == ([] if not math.isfinite(value) else [float(value)])  # nan/inf are not recorded
    assert out.endswith(" step=7\n")


def test_log_metric_refuses_names_a_regex_cannot_find() -> None:
    import smtk

    with pytest.raises(ValueError, match="no spaces"):
        smtk.log_metric("train loss", 1.0)
