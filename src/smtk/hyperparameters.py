"""Hyperparameters: decoding, the reserved split, argv rendering and typed access.

The platform stores hyperparameters as a string→string map. The SageMaker SDK
JSON-encodes each value (``"\\"adam\\""``, ``"64"``); raw API callers (boto3, Step
Functions) do not (``"adam"``, ``"True"``). Decoding follows the reference exactly:
``json.loads`` when it works, the value unchanged otherwise, so ``"true"`` becomes
``True`` but ``"True"`` stays the string ``"True"``.

The typed accessors on :class:`Hyperparameters` accept both encodings::

    env.hyperparameters.get_bool("use_amp")       # "true", "True", true, "1", "yes"
    env.hyperparameters.get_int("epochs", 10)     # "10", 10, "\\"10\\""
    env.hyperparameters.get_list("layers", int)   # "[64, 32]", "64,32"
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar, overload

from smtk.config import describe, short_key
from smtk.errors import ConfigError

SOURCE = "hyperparameters.json"

#: Keys the reference swallows entirely (neither user argv nor framework params).
RESERVED: Final = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
)
SAGEMAKER_PREFIX: Final = "sagemaker_"
#: smtk's own settings travel as hyperparameters with this prefix; like
#: ``sagemaker_*`` keys they never reach the user's argv or ``SM_HP_*``.
SMTK_PREFIX: Final = "smtk_"

ArgvFormat = Literal["compat", "json"]
T = TypeVar("T")
_MISSING: Any = object()

_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})
# ASCII only, no "_" separators: int()/float() alone would accept "1_000" and "١٢".
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
# The fraction needs its dot ("[0-9]+(?:\.[0-9]*)?"): "[0-9]+\.?[0-9]*" would split a long run
# of digits every possible way before failing (quadratic on "1111...x").
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.I
)


def decode_value(value: Any) -> Any:
    """Decode one stored value as the reference does (JSON if possible, else as-is)."""
    if not isinstance(value, (str, bytes, bytearray)):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def decode_all(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Decode every value of ``hyperparameters.json``, rejecting what no process could receive.

    Raises :class:`ConfigError` (naming the key) for a key containing ``=`` (it could not
    be the name of its ``SM_HP_*`` variable), for a value nested too deeply to decode, and
    for NUL characters or unpaired surrogates inside a JSON-encoded value (they cannot be
    passed in argv or an environment variable).
    """
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if "=" in key:
            raise ConfigError(
                SOURCE,
                short_key(key),
                "a name without '=' (it names the SM_HP_* variable)",
                "<'=' in the name>",
            )
        try:
            result = decode_value(value)
        except RecursionError:
            raise ConfigError(
                SOURCE, short_key(key), "JSON nested at most a few hundred levels", "<deeper nesting>"
            ) from None
        if result is not value and isinstance(value, str) and "\\u" in value:
            _check_text(result, short_key(key))
        decoded[key] = result
    return decoded


def _check_text(value: Any, key: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigError(SOURCE, key, "text without NUL characters", "<a NUL character (\\u0000)>")
        if any("\ud800" <= char <= "\udfff" for char in value):
            raise ConfigError(SOURCE, key, "valid Unicode text", "<an unpaired surrogate (\\ud800-\\udfff)>")
    elif isinstance(value, dict):
        for child_key, child in value.items():
            _check_text(child_key, key)
            _check_text(child, key)
    elif isinstance(value, list):
        for child in value:
            _check_text(child, key)


def is_reserved(key: str) -> bool:
    """Whether ``key`` is kept away from the user's argv and ``SM_HP_*``."""
    return key in RESERVED or key.startswith(SAGEMAKER_PREFIX) or key.startswith(SMTK_PREFIX)


def split(decoded: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split decoded hyperparameters into (user, framework params, smtk/sagemaker reserved).

    ``framework params`` are the ``sagemaker_*``/``smtk_*`` keys that are not in
    :data:`RESERVED` (they land in ``SM_FRAMEWORK_PARAMS``); ``reserved`` holds every
    non-user key, for smtk's own use.
    """
    user: dict[str, Any] = {}
    framework: dict[str, Any] = {}
    reserved: dict[str, Any] = {}
    for key, value in decoded.items():
        if is_reserved(key):
            reserved[key] = value
            if key not in RESERVED:
                framework[key] = value
        else:
            user[key] = value
    return user, framework, reserved


class Hyperparameters(dict[str, Any]):
    """The user's decoded hyperparameters, with typed accessors.

    It is a plain ``dict`` of decoded values (what the reference's
    ``env.hyperparameters`` is), so existing code keeps working; the accessors also
    see the raw stored strings, so ``get_str("version")`` returns ``"1.50"`` where
    decoding alone would give ``1.5``.
    """

    def __init__(self, decoded: Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> None:
        super().__init__(decoded)
        self._raw = dict(raw) if raw is not None else dict(decoded)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Hyperparameters:
        """Decode stored values (see :func:`decode_all`) and keep the stored form too."""
        return cls(decode_all(raw), raw)

    def raw(self, key: str) -> Any:
        """The value as stored in ``hyperparameters.json`` (before decoding)."""
        if key in self._raw:
            return self._raw[key]
        return self[key]

    # -- typed access ----------------------------------------------------------------

    def _lookup(self, key: str, default: Any, expected: str) -> tuple[bool, Any]:
        if key in self:
            return True, self[key]
        if default is _MISSING:
            raise ConfigError(SOURCE, key, expected, "<nothing: the hyperparameter is not set>")
        return False, default

    @overload
    def get_str(self, key: str) -> str: ...
    @overload
    def get_str(self, key: str, default: T) -> str | T: ...
    def get_str(self, key: str, default: Any = _MISSING) -> Any:
        """The value as text: a decoded string, else the raw stored string."""
        present, value = self._lookup(key, default, "a string")
        if not present or isinstance(value, str):
            return value
        raw = self._raw.get(key)
        if isinstance(raw, str):
            return raw
        return json.dumps(value)

    @overload
    def get_bool(self, key: str) -> bool: ...
    @overload
    def get_bool(self, key: str, default: T) -> bool | T: ...
    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        """``true``/``false`` in any case, JSON booleans, ``1``/``0``, ``yes``/``no``, ``on``/``off``."""
        expected = "a boolean (true/false, 1/0, yes/no)"
        present, value = self._lookup(key, default, expected)
        if not present:
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        raise ConfigError(SOURCE, key, expected, _show(self.raw(key)))

    @overload
    def get_int(self, key: str) -> int: ...
    @overload
    def get_int(self, key: str, default: T) -> int | T: ...
    def get_int(self, key: str, default: Any = _MISSING) -> Any:
        """An integer: ``10``, ``"10"``, ``"\\"10\\""`` or ``10.0``; never a boolean."""
        expected = "an integer"
        present, value = self._lookup(key, default, expected)
        if not present:
            return value
        result = _to_int(value)
        if result is None:
            raise ConfigError(SOURCE, key, expected, _show(self.raw(key)))
        return result

    @overload
    def get_float(self, key: str) -> float: ...
    @overload
    def get_float(self, key: str, default: T) -> float | T: ...
    def get_float(self, key: str, default: Any = _MISSING) -> Any:
        """A number: ``0.001``, ``"1e-5"``, ``3``; never a boolean."""
        expected = "a number"
        present, value = self._lookup(key, default, expected)
        if not present:
            return value
        result = _to_float(value)
        if result is None:
            raise ConfigError(SOURCE, key, expected, _show(self.raw(key)))
        return result

    @overload
    def get_list(self, key: str, item_type: Callable[[Any], Any] | None = None) -> list[Any]: ...
    @overload
    def get_list(self, key: str, item_type: Callable[[Any], Any] | None, default: T) -> list[Any] | T: ...
    def get_list(
        self, key: str, item_type: Callable[[Any], Any] | None = None, default: Any = _MISSING
    ) -> Any:
        """A list: a JSON array (``"[64, 32]"``) or comma-separated text (``"64,32"``).

        ``item_type`` (``int``, ``float``, ``str``, ``bool``) converts each item with the
        same rules as the scalar accessors.
        """
        expected = "a list (JSON array or comma-separated values)"
        present, value = self._lookup(key, default, expected)
        if not present:
            return value
        items = _to_list(value)
        if items is None:
            raise ConfigError(SOURCE, key, expected, _show(self.raw(key)))
        if item_type is None:
            return items
        converted = []
        for index, item in enumerate(items):
            result = _convert_item(item, item_type)
            if result is _MISSING:
                name = getattr(item_type, "__name__", str(item_type))
                raise ConfigError(SOURCE, f"{key}[{index}]", f"a {name}", _show(item))
            converted.append(result)
        return converted

    def get_json(self, key: str, default: Any = _MISSING) -> Any:
        """A JSON value.

        A decoded value that is a string holding JSON (a JSON document passed as a
        string through the SDK, so encoded twice) is decoded once more; a string that
        was validly JSON-encoded but holds no JSON (``"\\"adam\\""``) is returned as is.
        A raw value that is not JSON at all (``adam``, ``True``) is an error.
        """
        expected = "a JSON value"
        present, value = self._lookup(key, default, expected)
        if not present or not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            pass
        except RecursionError:
            raise ConfigError(SOURCE, key, expected, "<JSON nested too deeply>") from None
        if self._was_json(key):
            return value
        raise ConfigError(SOURCE, key, expected, _show(self.raw(key)))

    def _was_json(self, key: str) -> bool:
        raw = self._raw.get(key)
        if not isinstance(raw, str):
            return True
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            return False
        return True


def _show(value: Any) -> str:
    return describe(value)


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            if _INT_TEXT.fullmatch(text):
                return int(text)
            if _FLOAT_TEXT.fullmatch(text):  # "1e3", "10.0"
                return _to_int(float(text))
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            return None
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text) or _FLOAT_TEXT.fullmatch(text):
            return float(text)
    return None


def _to_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except ValueError:
                return None
            return decoded if isinstance(decoded, list) else None
        if not text:
            return []
        return [part.strip() for part in text.split(",")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return None


def _convert_item(item: Any, item_type: Callable[[Any], Any]) -> Any:
    probe = Hyperparameters({"_": item})
    try:
        if item_type is bool:
            return probe.get_bool("_")
        if item_type is int:
            return probe.get_int("_")
        if item_type is float:
            return probe.get_float("_")
        if item_type is str:
            return probe.get_str("_")
        return item_type(item)
    except (ConfigError, ValueError, TypeError):
        return _MISSING


# --- rendering ----------------------------------------------------------------------------


def format_env_value(value: Any) -> str:
    """One value as the reference writes it into an ``SM_*`` variable."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _compat_arg_value(value: Any) -> str:
    if hasattr(value, "items"):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin1")
    return str(value)


def _json_arg_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin1")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def to_cmd_args(hyperparameters: Mapping[str, Any], argv_format: ArgvFormat = "compat") -> list[str]:
    """Render hyperparameters as argv.

    ``compat`` (the default) is byte-for-byte the reference: sorted keys, ``--key``
    (``-k`` for one-letter keys), ``True``, Python-repr lists, dicts as ``k=v,k2=v2``.
    ``json`` renders every non-string value as compact JSON (``true``, ``[64,32]``,
    ``{"a":1}``) so scripts can parse it with ``json.loads``.
    """
    render = _compat_arg_value if argv_format == "compat" else _json_arg_value
    argv: list[str] = []
    for key in sorted(hyperparameters.keys()):
        name = f"--{key}" if len(key) > 1 else (f"-{key}" if key else "")
        argv.extend((name, render(hyperparameters[key])))
    return argv


def to_env_vars(values: Mapping[str, Any], prefix: str = "SM_") -> dict[str, str]:
    """``{prefix + KEY.upper(): format_env_value(v)}`` for every pair."""
    return {prefix + str(key).upper(): format_env_value(value) for key, value in values.items()}
