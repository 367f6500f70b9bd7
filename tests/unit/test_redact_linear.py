"""Masking never hangs: several MB of adversarial input finish well within the timeouts.

Masking runs on every line a job prints; a quadratic pattern turns one long line (a
base64 blob, a tensor dump, a hostile value) into minutes of CPU. Each case below is
linear in ``smtk.redact`` and took seconds to hours in the old implementation. No speed
is asserted (benchmarks/redact.py measures it); the timeouts only catch a hang.
"""

from __future__ import annotations

import json

import pytest

from smtk.redact import MASK, Masker, is_secret_name, secret_values

SIZE = 3_000_000
VALUES = ["hunter2-Secret-77", "s3cr3t-v4lue-xyz", "zzzz-not-present"]

#: Units repeated to SIZE characters.
REPEATED = [
    "a", "token", "a://", "eyJ", "=", ":", " ", "\t", "password", "secret=", "key=", "key: ", "--token x ",
    'token="', "token='", 'password="a" ', "AKIA", "ASIA", "ghp_", "hf_", "xoxb-", "eyJa.", "-----BEGIN ",
    "-----BEGIN PRIVATE KEY-----", "PRIVATE KEY-----", "\\", '\\"', '"', "'", "api_key_", "x@", "://@",
    "a:", "--", "-- ", "--a ", "Bearer ", "Authorization: Bearer ", "token: 'k': ", "https://u:p@h/ ",
    "hunter2-Secret-77", "[", "{", "token=[", "token_", "pad_token=", "tokens/s=1 ",
]  # fmt: skip

#: (prefix, unit repeated to SIZE, suffix): one huge name, value, quote or authority.
ONE_LONG = [
    ("", "a", "password=x"),
    ("password=", "a", ""),
    ('password="', "a", ""),
    ('password=\\"', "a", ""),
    ("x://", "a", "@host"),
    ("x://", "a", ""),
    ("eyJ", "a", "."),
    ("ghp_", "a", ""),
    ("-----BEGIN PRIVATE KEY-----", "a", ""),
    ("token", "_", "=x"),
    ("api_key", "-", ": x"),
    ("token", " ", "= x"),
    ("--token", " ", "x"),
    ("Authorization: Bearer", " ", "x"),
]


def fill(unit: str, size: int = SIZE) -> str:
    return (unit * (size // len(unit) + 1))[:size]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", REPEATED)
def test_repeated_shapes_do_not_hang(unit: str) -> None:
    out = Masker(VALUES).mask(fill(unit))
    assert VALUES[0] not in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("prefix", "unit", "suffix"), ONE_LONG)
def test_one_long_token_does_not_hang(prefix: str, unit: str, suffix: str) -> None:
    assert isinstance(Masker(VALUES).mask(prefix + fill(unit) + suffix), str)


@pytest.mark.timeout(60)
def test_masked_output_of_a_long_line_is_masked_again_unchanged() -> None:
    line = fill("step=1 loss=0.5 password=hunter2 https://u:p@h/x tokens/s=9 ")
    masker = Masker(VALUES)
    once = masker.mask(line)
    assert "hunter2" not in once and masker.mask(once) == once


@pytest.mark.timeout(60)
def test_long_names_and_argv_items_do_not_hang() -> None:
    assert is_secret_name(fill("a") + "_token")
    assert not is_secret_name(fill("_") + "tokens")
    argv = ["--token", fill("x"), fill("--password=x "), fill("a://b@")]
    out = Masker(VALUES).mask_argv(argv)
    assert out[1] == MASK


@pytest.mark.timeout(60)
def test_secret_values_are_bounded_on_hostile_input() -> None:
    deep_json = "[" * 200_000 + "]" * 200_000  # json.loads: RecursionError, caught
    nested = json.dumps({"password": "hunter22"})
    for _ in range(10):  # JSON in a JSON string, 10 times (each level doubles the escapes)
        nested = json.dumps({"config": nested})
    deep_lists = "[" * 5_000 + json.dumps({"password": "deep-value"}) + "]" * 5_000  # past 32 levels
    wide = {f"key_{i}": f"value-{i:06d}" for i in range(30_000)}  # under 1 MB of JSON: decoded
    found = secret_values(
        {"a": deep_json, "b": nested, "c": fill("{"), "d": deep_lists, "api_key": fill("x")},
        {"config": json.dumps(wide)},
    )
    assert len(found) == 30_002 and found[0] == fill("x") and "hunter22" in found
    assert "deep-value" not in found


@pytest.mark.timeout(60)
def test_mask_tree_of_a_wide_tree_does_not_hang() -> None:
    tree = {"rows": [{"name": f"n{i}", "token": f"t{i}", "url": "https://u:p@h/"} for i in range(100_000)]}
    out = Masker(VALUES).mask_tree(tree)
    assert out["rows"][-1] == {"name": "n99999", "token": MASK, "url": f"https://{MASK}@h/"}
