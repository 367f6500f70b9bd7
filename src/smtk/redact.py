"""Keeping secrets out of logs, failure files and printed commands.

A value is secret when its name looks secret (``password``, ``secret``, ``token``,
``key``, ``credential``, ``passwd``, ``auth``), wherever it comes from (hyperparameter,
environment variable); credentials inside URLs (``https://user:pass@host``) are
secret wherever they appear. :func:`redact_text` scrubs free text (stderr tails,
pip output) given the secret values known for the job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "****"

#: Name components that mark a secret (``DB_PASSWORD``, ``apiToken``, ``hf-token``).
_SECRET_PARTS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "passphrase",
    }
)
# Components that contain a secret word but name something harmless.
_HARMLESS_AFTER_KEY = frozenset({"id", "name", "path", "file", "type", "size", "len", "length"})
_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s:]+(:[^/@\s]*)?)@")
# Secrets written inline as NAME=value or --name value in text.
_INLINE = re.compile(
    r"(?P<name>[A-Za-z0-9_.-]*(?:password|passwd|secret|token|credential|api[_-]?key|access[_-]?key))"
    r"(?![A-Za-z0-9_])(?P<sep>\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&]+)",
    re.I,
)
# Value shapes that are secrets by themselves: AWS access key ids, bearer tokens.
_SHAPES = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")

_MIN_SECRET_LEN = 4


def is_secret_name(name: str) -> bool:
    """Whether a variable or hyperparameter called ``name`` holds a secret.

    A name is secret when one of its components (split at ``_``, ``-``, ``.`` and
    camelCase) is a secret word: ``api_token`` and ``DBPassword`` are, ``max_tokens``
    and ``keyword`` are not. ``*_key_id``/``*_key_path`` style names are not secret,
    except AWS access key ids.
    """
    bare = name[6:] if name.upper().startswith("SM_HP_") else name
    parts = [p.lower() for p in _SPLIT.split(bare) if p]
    for index, part in enumerate(parts):
        if part not in _SECRET_PARTS:
            continue
        following = parts[index + 1] if index + 1 < len(parts) else None
        if part == "key" and following in _HARMLESS_AFTER_KEY and parts[:2] != ["aws", "access"]:
            continue
        return True
    return False


def redact_url(text: str) -> str:
    """``https://user:pass@host/x`` -> ``https://****@host/x``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with secret-named values masked and URL credentials removed."""
    result: dict[str, Any] = {}
    for name, value in values.items():
        if is_secret_name(str(name)) and value not in (None, ""):
            result[name] = MASK
        elif isinstance(value, str):
            result[name] = redact_url(value)
        else:
            result[name] = value
    return result


def secret_values(*sources: Mapping[str, Any]) -> list[str]:
    """The string forms of every secret-named value in ``sources`` (longest first)."""
    found: set[str] = set()
    for source in sources:
        for name, value in source.items():
            if value is None or not is_secret_name(str(name)):
                continue
            text = value if isinstance(value, str) else str(value)
            if len(text) >= _MIN_SECRET_LEN:
                found.add(text)
                # JSON-encoded form as stored in hyperparameters.json
                if text.startswith('"') and text.endswith('"') and len(text) > 2:
                    found.add(text[1:-1])
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text with known secret values, URL credentials and inline secrets masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = redact_url(text)
    text = _SHAPES.sub(MASK, text)
    return _INLINE.sub(lambda m: f"{m.group('name')}{m.group('sep')}{MASK}", text)


def redact_argv(argv: Iterable[str], secrets: Iterable[str] = ()) -> list[str]:
    """argv with the value after a secret-looking ``--option`` masked, for display."""
    items = list(argv)
    secret_list = list(secrets)
    out: list[str] = []
    mask_next = False
    for item in items:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        if item.startswith("-") and is_secret_name(item.lstrip("-").split("=", 1)[0]):
            if "=" in item:
                out.append(item.split("=", 1)[0] + "=" + MASK)
            else:
                out.append(item)
                mask_next = True
            continue
        out.append(redact_text(item, secret_list))
    return out
