"""Slurm's host list expressions, expanded the way Slurm expands them.

Slurm writes node lists compressed: ``tux[01-03,7],login``. ``scontrol show hostnames``
expands them and is used where it is installed (:func:`smtk.scheduler.slurm.expand`);
this module is the fallback, for images that carry no Slurm client. It follows what
Slurm 22.05's ``scontrol show hostnames`` does (the unit tests compare the two on
generated expressions whenever ``scontrol`` is present):

- hosts are separated by commas, spaces, tabs or newlines, except inside brackets;
  empty entries are skipped and duplicates kept, in the order given;
- a bracket group holds comma-separated numbers and ``lo-hi`` ranges (``lo <= hi``,
  at most 65,536 numbers each); numbers are zero-padded to the width ``lo`` is
  written with (``[001-10]`` gives ``001`` ... ``010``, ``[9-010]`` gives ``9``, ``10``);
- a name may hold several groups (``rack[0-1]_blade[0-3]``); the last group must end
  the name. The last group varies fastest; the groups before it are expanded from the
  right, so the one just before the last varies slowest (``a[0-1]b[0-1]c[0-1]`` gives
  ``a0b0c0 a0b0c1 a1b0c0 a1b0c1 a0b1c0 ...``, as Slurm lists it);
- a ``[`` with no ``]`` after it in a name's prefix is part of the name.

The step form ``[0-64/4]`` of later Slurm versions is rejected, as 22.05 rejects it. So
are unbalanced brackets, more than 32 groups in a name and more than 1,000,000 names
(bounds no cluster reaches; they keep a hostile value from exhausting memory).
Written from Slurm's documented and observed behaviour: the maintained Python
implementation (python-hostlist) is GPL-licensed.
"""

from __future__ import annotations

import re

#: The most numbers one ``lo-hi`` range may give (Slurm's limit).
MAX_RANGE = 65536
#: Far beyond any cluster: bounds memory (and recursion) on a hostile expression.
MAX_HOSTS = 1_000_000
MAX_GROUPS = 32
_SEPARATORS = frozenset(",\t\n ")
_DIGITS = re.compile(r"[0-9]+")


class HostlistError(ValueError):
    """A host list expression Slurm would reject (names the expression and the part)."""


def expand(expression: str) -> list[str]:
    """Every host name of ``expression``, in Slurm's order (duplicates kept).

    Raises :class:`HostlistError` for an expression Slurm rejects or one this parser
    does not read the way Slurm does (unbalanced brackets).
    """
    hosts: list[str] = []
    for token in _tokens(expression):
        if token.count("[") > MAX_GROUPS:
            raise HostlistError(f"host list {expression!r}: more than {MAX_GROUPS} bracket groups in a name")
        hosts.extend(_expand_name(token, expression))
        _check_size(len(hosts), expression)
    return hosts


def _check_size(count: int, expression: str) -> None:
    if count > MAX_HOSTS:
        raise HostlistError(f"host list {expression!r}: more than {MAX_HOSTS} names")


def _tokens(expression: str) -> list[str]:
    """The names of ``expression``: split at separators outside brackets."""
    tokens: list[str] = []
    depth = 0
    start = 0
    for position, char in enumerate(expression):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char in _SEPARATORS and depth == 0:
            if position > start:
                tokens.append(expression[start:position])
            start = position + 1
    if depth:
        raise HostlistError(f"host list {expression!r}: a '[' is never closed")
    if start < len(expression):
        tokens.append(expression[start:])
    return tokens


def _expand_name(token: str, expression: str) -> list[str]:
    open_at = token.rfind("[")
    if open_at < 0:
        return [token]
    close_at = token.find("]", open_at)
    if close_at != len(token) - 1:
        raise HostlistError(
            f"host list {expression!r}: {token!r} goes on after its last bracket group "
            "(Slurm accepts nothing after the last ']')"
        )
    numbers = _numbers(token[open_at + 1 : close_at], expression)
    prefixes = _prefixes(token[:open_at], expression)
    _check_size(len(prefixes) * len(numbers), expression)
    return [prefix + number for prefix in prefixes for number in numbers]


def _prefixes(prefix: str, expression: str) -> list[str]:
    """``prefix`` with its bracket groups expanded, the rightmost group varying slowest."""
    open_at = prefix.rfind("[")
    close_at = prefix.rfind("]")
    if open_at < 0 or close_at < open_at:
        return [prefix]  # no group, or a '[' that opens none: part of the name
    head, group, tail = prefix[:open_at], prefix[open_at + 1 : close_at], prefix[close_at + 1 :]
    expanded: list[str] = []
    for number in _numbers(group, expression):
        expanded.extend(_prefixes(head + number + tail, expression))
        _check_size(len(expanded), expression)
    return expanded


def _numbers(group: str, expression: str) -> list[str]:
    """The numbers of one bracket group (``1,3-5,07``), as strings, padded as Slurm pads them."""
    numbers: list[str] = []
    for part in group.split(","):
        low_text, _, high_text = part.partition("-")
        if not _DIGITS.fullmatch(low_text) or (high_text and not _DIGITS.fullmatch(high_text)):
            raise HostlistError(
                f"host list {expression!r}: [{group}] holds {part!r}; expected a number or a range lo-hi"
            )
        low = int(low_text)
        high = int(high_text) if high_text else low  # "7-" is 7, as in Slurm
        if high < low:
            raise HostlistError(f"host list {expression!r}: range {part!r} ends before it starts")
        if high - low + 1 > MAX_RANGE:
            raise HostlistError(
                f"host list {expression!r}: range {part!r} has more than {MAX_RANGE} numbers (Slurm's limit)"
            )
        width = len(low_text)
        numbers.extend(str(value).zfill(width) for value in range(low, high + 1))
    return numbers
