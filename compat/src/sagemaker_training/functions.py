"""Calling a user's function with the arguments it asks for (``matching_args``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sagemaker_training import mapping


class ArgSpec(NamedTuple):
    """A function's parameters (``inspect.ArgSpec``, which Python 3.11 removed)."""

    args: list[str]
    varargs: str | None
    keywords: str | None
    defaults: tuple[Any, ...] | None


def getargspec(fn: Callable[..., Any]) -> ArgSpec:
    """The names of ``fn``'s positional parameters, its ``*`` and ``**`` names and defaults."""
    spec = inspect.getfullargspec(fn)
    return ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)


def matching_args(fn: Callable[..., Any], dictionary: Mapping[str, Any]) -> dict[str, Any]:
    """The items of ``dictionary`` that ``fn`` takes as arguments (all of them when it takes ``**kwargs``)."""
    spec = getargspec(fn)
    if spec.keywords:
        return dict(dictionary)
    return mapping.split_by_criteria(dictionary, spec.args).included


def error_wrapper(fn: Callable[..., Any], error_class: type[Exception]) -> Callable[..., Any]:
    """``fn``, re-raising any ``Exception`` it raises as ``error_class(exception)``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise error_class(exc) from exc

    return wrapper
