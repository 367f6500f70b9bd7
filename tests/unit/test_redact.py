"""Secret detection and masking."""

from __future__ import annotations

import pytest

from smtk.redact import (
    MASK,
    is_secret_name,
    redact_argv,
    redact_mapping,
    redact_text,
    redact_url,
    secret_values,
)


@pytest.mark.parametrize(
    "name",
    ["password", "DB_PASSWORD", "api_token", "SM_HP_API_TOKEN", "aws_secret_access_key", "hf-token",
     "API_KEY", "credentials", "passwd", "AUTH_HEADER", "private_key", "DBPassword", "apiKey"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["epochs", "keyword", "monkey", "max_tokens", "SM_HP_LR", "keys", "ssh_key_path", "tokenizer", "PWD"],
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_url_credentials_are_removed_wherever_they_appear() -> None:
    text = "pip install -i https://aws:TOKEN123@my.domain/simple/ pkg; see http://user@host/x"
    assert (
        redact_url(text) == f"pip install -i https://{MASK}@my.domain/simple/ pkg; see http://{MASK}@host/x"
    )


def test_mapping_masks_secret_values_only() -> None:
    values = {"lr": 0.1, "db_password": "hunter2", "index": "https://u:p@h/simple", "token": ""}
    assert redact_mapping(values) == {
        "lr": 0.1,
        "db_password": MASK,
        "index": f"https://{MASK}@h/simple",
        "token": "",
    }


def test_secret_values_include_json_decoded_forms() -> None:
    found = secret_values({"api_token": '"abcd1234"', "lr": "0.1"}, {"MY_SECRET": "zz-top-99"})
    assert found == ['"abcd1234"', "zz-top-99", "abcd1234"] or set(found) == {
        '"abcd1234"',
        "abcd1234",
        "zz-top-99",
    }


def test_text_masks_known_values_inline_names_and_key_ids() -> None:
    text = "login with abcd1234 failed; password=hunter2 key AKIAABCDEFGHIJKLMNOP max_tokens=512"
    out = redact_text(text, ["abcd1234"])
    assert "abcd1234" not in out and "hunter2" not in out and "AKIAABCDEFGHIJKLMNOP" not in out
    assert "max_tokens=512" in out


def test_argv_masks_values_of_secret_options() -> None:
    argv = [
        "python",
        "train.py",
        "--api-token",
        "t0ps3cret",
        "--lr",
        "0.1",
        "--password=x",
        "--note",
        "has t0ps3cret",
    ]
    assert redact_argv(argv, ["t0ps3cret"]) == [
        "python", "train.py", "--api-token", MASK, "--lr", "0.1", f"--password={MASK}",
        "--note", f"has {MASK}",
    ]  # fmt: skip
