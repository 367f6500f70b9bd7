"""Hyperparameter decoding, the reserved split, argv / SM_* rendering and the typed accessors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtk.errors import ConfigError
from smtk.hyperparameters import (
    Hyperparameters,
    decode_all,
    decode_value,
    format_env_value,
    split,
    to_cmd_args,
    to_env_vars,
)

# -- decoding (reference rules, from the reference's verified probes) ----------------------


@pytest.mark.parametrize(
    ("stored", "decoded"),
    [
        ("64", 64),
        ("0.001", 0.001),
        ("1.50", 1.5),
        ("1e-5", 1e-05),
        ("true", True),
        ("True", "True"),
        ("null", None),
        ('"adam"', "adam"),
        ("adam", "adam"),
        ("001", "001"),
        ("[64, 32]", [64, 32]),
        ('{"a": 1}', {"a": 1}),
        (7, 7),
        ("", ""),
        (" 42 ", 42),
        ('"\\u00e9"', "é"),
    ],
)
def test_decode_value_follows_the_reference(stored: Any, decoded: Any) -> None:
    assert decode_value(stored) == decoded
    assert type(decode_value(stored)) is type(decoded)


def test_nan_decodes_to_a_float_nan() -> None:
    assert math.isnan(decode_value("NaN"))


def test_split_reserved_framework_and_smtk() -> None:
    decoded = {
        "lr": 0.1,
        "sagemaker_program": "train.py",
        "sagemaker_mpi_enabled": True,
        "sagemaker_anything": 1,
        "_tuning_objective_metric": "loss",
        "default_user_module_name": "m",
        "smtk_argv_format": "json",
        "Sagemaker_x": 1,
    }
    user, framework, reserved = split(decoded)
    assert user == {"lr": 0.1, "Sagemaker_x": 1}
    assert framework == {"sagemaker_mpi_enabled": True, "sagemaker_anything": 1, "smtk_argv_format": "json"}
    assert set(reserved) == set(decoded) - set(user)


def test_decode_all_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^hyperparameters.json: key 'x': expected JSON nested"):
        decode_all({"ok": "1", "x": "[" * 20_000 + "]" * 20_000})


# -- argv rendering --------------------------------------------------------------------------


def test_argv_probe_from_the_reference() -> None:
    values = {"flag": True, "d": {"z": 1, "a": [1, 2]}, "b": b"x", "none": None, "s": "a b"}
    assert to_cmd_args(values) == [
        "-b",
        "x",
        "-d",
        "a=[1, 2],z=1",
        "--flag",
        "True",
        "--none",
        "",
        "-s",
        "a b",
    ]


def test_argv_decoding_probe_from_the_reference() -> None:
    stored = {"a": "1.50", "b": "001", "c": "NaN", "d": "True", "e": "1e-5", "f": 7,
              "g": '{"x": {"y": [1, true]}}', "h": '""'}  # fmt: skip
    argv = to_cmd_args(decode_all(stored))
    assert argv == ["-a", "1.5", "-b", "001", "-c", "nan", "-d", "True", "-e", "1e-05", "-f", "7",
                    "-g", "x={'y': [1, True]}", "-h", ""]  # fmt: skip


def test_argv_sorting_is_by_code_point() -> None:
    argv = to_cmd_args({"alpha": 1, "Zeta": 2, "batch_size": 3, "batch-size": 4, "9": 5})
    assert argv[::2] == ["-9", "--Zeta", "--alpha", "--batch-size", "--batch_size"]


def test_argv_json_format() -> None:
    values = {"flag": True, "layers": [64, 32], "d": {"b": 1, "a": "x"}, "s": "plain", "n": None, "f": 1.5}
    argv = to_cmd_args(values, "json")
    assert argv == ["-d", '{"a":"x","b":1}', "-f", "1.5", "--flag", "true", "--layers", "[64,32]",
                    "-n", "null", "-s", "plain"]  # fmt: skip


def test_env_var_probe_from_the_reference() -> None:
    values = {"flag": True, "n": 3, "f": 0.5, "s": "str", "none": None, "l": ["a", 1], "u": "é",
              "d": {"b": 1, "a": "é"}}  # fmt: skip
    assert to_env_vars(values) == {
        "SM_FLAG": "true", "SM_N": "3", "SM_F": "0.5", "SM_S": "str", "SM_NONE": "", "SM_L": '["a",1]',
        "SM_U": "é", "SM_D": '{"a":"\\u00e9","b":1}',
    }  # fmt: skip
    assert format_env_value(float("nan")) == "NaN"


# -- properties ------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.text(min_size=0, max_size=12).filter(lambda k: "=" not in k)


@given(json_values)
def test_decode_inverts_the_sdk_encoding(value: Any) -> None:
    assert decode_value(json.dumps(value)) == value


@given(st.dictionaries(keys, json_values, max_size=8), st.sampled_from(["compat", "json"]))
def test_argv_shape(values: dict[str, Any], argv_format: Any) -> None:
    argv = to_cmd_args(values, argv_format)
    assert len(argv) == 2 * len(values)
    names = argv[::2]
    expected = [("--" if len(k) > 1 else "-") + k if k else "" for k in sorted(values)]
    assert names == expected
    assert all(isinstance(token, str) for token in argv)


@given(st.dictionaries(keys, json_values, max_size=8))
def test_json_argv_round_trips(values: dict[str, Any]) -> None:
    argv = to_cmd_args(values, "json")
    for key, token in zip(sorted(values), argv[1::2], strict=True):
        value = values[key]
        assert (token == value) if isinstance(value, str) else (json.loads(token) == value)


@given(st.dictionaries(keys, json_values | st.just(float("nan")), max_size=8))
def test_env_vars_are_strings_that_decode_back(values: dict[str, Any]) -> None:
    env = to_env_vars(values, prefix="SM_HP_")
    assert all(isinstance(v, str) for v in env.values())
    assert all(name.startswith("SM_HP_") for name in env)
    if len({k.upper() for k in values}) != len(values):
        return  # SM_HP_A and SM_HP_a are one variable: one of the values wins, as in the reference
    for key, value in values.items():
        text = env["SM_HP_" + key.upper()]
        if value is None:
            assert text == ""
        elif isinstance(value, str):
            assert text == value
        elif isinstance(value, float) and math.isnan(value):
            assert text == "NaN"
        else:
            assert json.loads(text) == value


@settings(max_examples=200)
@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(["sdk", "raw", "quoted"]))
def test_get_int_reads_every_encoding(number: int, style: str) -> None:
    stored = {"sdk": json.dumps(number), "raw": str(number), "quoted": json.dumps(json.dumps(number))}[style]
    hp = Hyperparameters.from_raw({"n": stored})
    assert hp.get_int("n") == number
    assert hp.get_float("n") == float(number)


# -- typed accessors -------------------------------------------------------------------------

TRUE_FORMS = ["true", "True", "TRUE", '"true"', '"True"', "1", '"yes"', "on", True, 1]
FALSE_FORMS = ["false", "False", '"False"', "0", "no", "off", False, 0]


@pytest.mark.parametrize("stored", TRUE_FORMS)
def test_get_bool_true(stored: Any) -> None:
    assert Hyperparameters.from_raw({"b": stored}).get_bool("b") is True


@pytest.mark.parametrize("stored", FALSE_FORMS)
def test_get_bool_false(stored: Any) -> None:
    assert Hyperparameters.from_raw({"b": stored}).get_bool("b") is False


@pytest.mark.parametrize(
    ("method", "stored", "expected"),
    [
        ("get_int", "10", 10),
        ("get_int", '"10"', 10),
        ("get_int", "001", 1),
        ("get_int", "1e3", 1000),
        ("get_int", "10.0", 10),
        ("get_int", " -3 ", -3),
        ("get_float", "0.001", 0.001),
        ("get_float", "1.50", 1.5),
        ("get_float", '"1e-5"', 1e-5),
        ("get_float", "3", 3.0),
        ("get_str", "1.50", "1.50"),
        ("get_str", '"adam"', "adam"),
        ("get_str", "adam", "adam"),
        ("get_str", "True", "True"),
        ("get_str", 7, "7"),
        ("get_json", '{"a": [1]}', {"a": [1]}),
        ("get_json", json.dumps('{"a": [1]}'), {"a": [1]}),
        ("get_json", '"adam"', "adam"),
        ("get_json", "null", None),
        ("get_list", "[64, 32]", [64, 32]),
        ("get_list", "64,32", ["64", "32"]),
        ("get_list", "", []),
        ("get_list", "5", [5]),
    ],
)
def test_typed_accessors(method: str, stored: Any, expected: Any) -> None:
    hp = Hyperparameters.from_raw({"k": stored})
    result = getattr(hp, method)("k")
    assert result == expected
    assert type(result) is type(expected)


def test_get_list_converts_items() -> None:
    hp = Hyperparameters.from_raw({"a": "64,32", "b": '["1", 2]', "c": "true,False,0"})
    assert hp.get_list("a", int) == [64, 32]
    assert hp.get_list("b", float) == [1.0, 2.0]
    assert hp.get_list("c", bool) == [True, False, False]


@pytest.mark.parametrize(
    ("method", "stored", "expected", "found"),
    [
        ("get_bool", "maybe", "a boolean", '<string "maybe">'),
        ("get_bool", "2", "a boolean", '<string "2">'),
        ("get_int", "1.5", "an integer", '<string "1.5">'),
        ("get_int", "True", "an integer", '<string "True">'),
        ("get_int", "true", "an integer", '<string "true">'),
        ("get_int", "1_000", "an integer", '<string "1_000">'),
        ("get_int", "١٢", "an integer", '<string "١٢">'),
        ("get_int", "1e400", "an integer", '<string "1e400">'),
        ("get_int", "9" * 5000, "an integer", "<string"),
        ("get_float", "fast", "a number", '<string "fast">'),
        ("get_float", "[1]", "a number", '<string "[1]">'),
        ("get_json", "adam", "a JSON value", '<string "adam">'),
        ("get_json", "True", "a JSON value", '<string "True">'),
        ("get_list", "[1, 2", "a list", '<string "[1, 2">'),
        ("get_list", '{"a": 1}', "a list", '<string "{\\"a\\": 1}">'),
        ("get_list", "null", "a list", '<string "null">'),
    ],
)
def test_typed_accessor_errors_name_the_key(method: str, stored: Any, expected: str, found: str) -> None:
    hp = Hyperparameters.from_raw({"my_key": stored})
    with pytest.raises(ConfigError) as caught:
        getattr(hp, method)("my_key")
    message = str(caught.value)
    assert message.startswith(f"hyperparameters.json: key 'my_key': expected {expected}")
    assert found in message
    assert len(message) < 300


def test_list_item_errors_name_the_index() -> None:
    with pytest.raises(ConfigError, match=r"key 'layers\[1\]': expected a int, found <string \"x\">"):
        Hyperparameters.from_raw({"layers": "64,x"}).get_list("layers", int)


def test_missing_key_and_defaults() -> None:
    hp = Hyperparameters.from_raw({})
    assert hp.get_int("epochs", 10) == 10
    assert hp.get_bool("amp", None) is None
    with pytest.raises(ConfigError, match=r"key 'epochs': expected an integer, found <nothing"):
        hp.get_int("epochs")


def test_it_is_a_plain_dict_of_decoded_values() -> None:
    hp = Hyperparameters.from_raw({"lr": "0.1", "name": "x"})
    assert hp == {"lr": 0.1, "name": "x"}
    assert json.loads(json.dumps(hp)) == {"lr": 0.1, "name": "x"}
    assert hp.raw("lr") == "0.1"
