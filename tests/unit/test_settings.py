"""`smtk.settings`: SMTK_* values parsed with one error style."""

from __future__ import annotations

import pytest

from smtk import settings
from smtk.errors import ConfigError


def test_unset_or_blank_means_the_default() -> None:
    assert settings.number({}, "SMTK_X", 2.5) == 2.5
    assert settings.number({"SMTK_X": "  "}, "SMTK_X", 2.5) == 2.5
    assert settings.integer({"SMTK_X": ""}, "SMTK_X", 7) == 7
    assert settings.flag({}, "SMTK_X", default=True) is True
    assert settings.choice({}, "SMTK_X", ("a", "b"), "a") == "a"


def test_values_are_parsed() -> None:
    assert settings.number({"SMTK_X": "0.25"}, "SMTK_X", 1.0) == 0.25
    assert settings.integer({"SMTK_X": " 12 "}, "SMTK_X", 1, minimum=1) == 12
    assert settings.flag({"SMTK_X": "Off"}, "SMTK_X", default=True) is False
    assert settings.choice({"SMTK_X": "POLL"}, "SMTK_X", ("auto", "poll"), "auto") == "poll"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: settings.number({"SMTK_X": "soon"}, "SMTK_X", 1.0),
            "SMTK_X: expected a number >= 0, found 'soon'",
        ),
        (lambda: settings.number({"SMTK_X": "nan"}, "SMTK_X", 1.0), "found 'nan'"),
        (lambda: settings.number({"SMTK_X": "inf"}, "SMTK_X", 1.0), "found 'inf'"),
        (lambda: settings.number({"SMTK_X": "0.01"}, "SMTK_X", 1.0, minimum=0.05), "a number >= 0.05"),
        (lambda: settings.integer({"SMTK_X": "1.5"}, "SMTK_X", 1), "an integer >= 0, found '1.5'"),
        (lambda: settings.integer({"SMTK_X": "0"}, "SMTK_X", 1, minimum=1), "an integer >= 1, found '0'"),
        (
            lambda: settings.flag({"SMTK_X": "maybe"}, "SMTK_X", default=False),
            "1/true/yes/on or 0/false/no/off",
        ),
        (lambda: settings.choice({"SMTK_X": "x"}, "SMTK_X", ("a", "b"), "a"), "'a' or 'b', found 'x'"),
    ],
)
def test_bad_values_name_the_variable(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match="SMTK_X") as info:
        call()  # type: ignore[operator]
    assert message in str(info.value)


def test_s3_settings() -> None:
    default = settings.S3Settings.from_environ({})
    assert (default.client, default.concurrency, default.memory_limit, default.progress_seconds) == (
        "auto",
        64,
        1024**3,
        5.0,
    )
    chosen = settings.S3Settings.from_environ(
        {
            "SMTK_S3_CLIENT": "Classic",
            "SMTK_S3_CONCURRENCY": "8",
            "SMTK_S3_MEMORY_MB": "512",
            "SMTK_TRANSFER_PROGRESS_SECONDS": "0.5",
        }
    )
    assert (chosen.client, chosen.concurrency, chosen.memory_limit, chosen.progress_seconds) == (
        "classic",
        8,
        512 * 1024**2,
        0.5,
    )
    assert settings.Settings.from_environ({"SMTK_S3_CLIENT": "crt"}).s3.client == "crt"
    assert settings.S3Settings.from_environ({}).templates is True
    assert settings.S3Settings.from_environ({"SMTK_S3_TEMPLATES": "off"}).templates is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SMTK_S3_CLIENT", "fast", "'auto' or 'crt' or 'classic', found 'fast'"),
        ("SMTK_S3_CONCURRENCY", "0", "an integer >= 1, found '0'"),
        ("SMTK_S3_MEMORY_MB", "64", "an integer >= 256, found '64'"),
        ("SMTK_TRANSFER_PROGRESS_SECONDS", "0", "a number >= 0.1, found '0'"),
        ("SMTK_S3_TEMPLATES", "maybe", "1/true/yes/on or 0/false/no/off, found 'maybe'"),
    ],
)
def test_bad_s3_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        settings.Settings.from_environ({name: value})
    assert message in str(info.value)
