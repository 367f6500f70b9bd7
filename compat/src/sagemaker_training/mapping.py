"""Hyperparameters as argv and as ``SM_*`` variables, rendered by smtk's own functions.

``to_cmd_args`` and ``to_env_vars`` are :func:`smtk.hyperparameters.to_cmd_args` and
:func:`smtk.hyperparameters.to_env_vars` (byte for byte the reference's rendering);
this module only accepts the reference's looser inputs (bytes and non-string keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from smtk import hyperparameters


class SplitResultSpec(NamedTuple):
    """The two halves of :func:`split_by_criteria`."""

    included: dict[Any, Any]
    excluded: dict[Any, Any]


def _key(key: Any) -> str:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("latin1")
    return "" if key is None else str(key)


def to_env_vars(mapping: Mapping[Any, Any]) -> dict[str, str]:
    """``{"SM_" + KEY.upper(): value}``: strings as they are, ``None`` empty, the rest compact JSON."""
    rendered = hyperparameters.to_env_vars({_key(k): v for k, v in mapping.items() if _key(k)})
    if any(not _key(k) for k in mapping):  # the reference maps an empty key to an empty name
        rendered[""] = hyperparameters.format_env_value(next(v for k, v in mapping.items() if not _key(k)))
    return rendered


def to_cmd_args(mapping: Mapping[Any, Any]) -> list[str]:
    """``["--key", "value", ...]`` sorted by key, ``-k`` for one-letter keys, dicts as ``k=v,k2=v2``."""
    return hyperparameters.to_cmd_args({_key(k): v for k, v in mapping.items()})


def split_by_criteria(
    dictionary: Mapping[Any, Any], keys: Iterable[Any] | None = None, prefix: str | None = None
) -> SplitResultSpec:
    """Split ``dictionary`` into the items whose key is in ``keys`` or starts with ``prefix``, and the rest"""
    wanted = set(keys or ())
    included = {
        k: v
        for k, v in dictionary.items()
        if k in wanted or (prefix and isinstance(k, str) and k.startswith(prefix))
    }
    excluded = {k: v for k, v in dictionary.items() if k not in included}
    return SplitResultSpec(included=included, excluded=excluded)


class MappingMixin(Mapping[str, Any]):
    """A read-only mapping of an object's properties (``dict(obj)`` lists every property)."""

    def properties(self) -> list[str]:
        """The names of the public properties of this object's class, sorted."""
        return [name for name in dir(type(self)) if self._is_property(name)]

    def _is_property(self, name: str) -> bool:
        return isinstance(getattr(type(self), name, None), property)

    def __getitem__(self, key: str) -> Any:
        if not self._is_property(key):
            raise KeyError(f"Trying to access non property {key}")
        return getattr(self, key)

    def __len__(self) -> int:
        return len(self.properties())

    def __iter__(self) -> Iterator[str]:
        return iter(self.properties())

    def __str__(self) -> str:
        return str(dict(self))
