"""Keeping secrets out of logs, failure files and printed commands, in linear time.

**Which names are secret.** One rule, for hyperparameters, environment variables,
``--options``, ``NAME=value`` text and the keys of nested JSON alike. The name is
normalised: lower case, then every character other than ``a-z`` and ``0-9`` dropped
(``DB_Password``, ``db-password`` and ``dbPassword`` all become ``dbpassword``). It is
secret when the normalised name

- *contains* ``password``, ``passwd``, ``passphrase``, ``secret``, ``credential``,
  ``apikey``, ``accesskey``, ``privatekey``, ``authorization`` or ``bearer``; or
- *ends with* (trailing digits dropped first: ``token2``, ``api_key_1``) ``token``,
  ``pass``, ``pwd``, ``key``, ``auth``, ``cred``, ``creds``, ``cookie``, ``jwt`` or
  ``signature``, unless it ends with a tokenizer special-token name (``bos_token``,
  ``eos_token``, ``pad_token``, ``unk_token``, ``sep_token``, ``cls_token``,
  ``mask_token``: their values are vocabulary entries) or is the shell's ``PWD`` or
  ``OLDPWD`` (a path that would blank every path in the logs).

So ``hftoken``, ``PGPASSWORD``, ``db_pass`` and ``AWS_ACCESS_KEY_ID`` are secret;
``max_tokens``, ``tokenizer``, ``keyword``, ``key_id``, ``author`` are not. Accepted false
positives: ``sort_key``, ``s3_key``, ``bypass``, ``monkey``.

**What** :meth:`Masker.mask` **masks** (the mask is ``****``), in this order:

1. the known secret values (4 characters or more; :func:`secret_values` collects them),
   wherever they appear (overlapping occurrences as one mask);
2. the body of a PEM private-key block (``-----BEGIN ... PRIVATE KEY-----`` to the END
   line, or to the end of the text);
3. values that are secrets by their shape: AWS access key ids (``AKIA``/``ASIA`` + 16),
   GitHub (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``), Hugging Face (``hf_``) and
   Slack (``xox?-``) tokens, JWTs (``eyJ...`` ``.`` ``eyJ...`` ``.`` signature);
4. URL credentials: ``scheme://user:pass@host`` and ``scheme://TOKEN@host`` become
   ``scheme://****@host`` (the user information runs to the authority's last ``@``);
5. inline values of secret names: ``NAME=value``, ``NAME: value``, ``NAME = value``,
   ``"NAME": "value"``, ``'NAME': 'value'`` (also JSON-escaped, ``\\"NAME\\": ...``),
   ``--NAME value``, ``--NAME=value``, ``?a=1&token=abc``. A value is a quoted string
   (masked inside its quotes) or runs up to whitespace, ``,``, ``;``, ``&`` or a closing
   bracket or quote; an auth scheme is kept (``Authorization: Bearer ****``; also
   ``Basic``, ``Token``, ``Digest``). In free text a name is found where its secret word
   (``pass``, ``secret``, ``cred``, ``key``, ``auth``, ``bearer``, ``token``, ``pwd``,
   ``cookie``, ``jwt``, ``signature``) is written unbroken: ``pass_word=x`` is masked only
   as a known value.

Masking line by line (the output pump), a PEM block's BEGIN line has nothing after it
to mask: the lines of its body are masked only when the key is a known value.

**Linear time.** :meth:`Masker.mask` takes time proportional to the length of the text,
whatever the text (a 10 MB line, 10 MB of ``=``, ``tokentoken...``, ``a://a://...``,
``eyJeyJ...``): no pattern here is retried over the same characters from one start
position after another, which is what made the old ``[A-Za-z0-9_.-]*(?:password|...)`` and
``[a-z][a-z0-9+.-]*://`` quadratic.

- Every searched pattern starts with a literal, so ``_sre`` jumps from one occurrence of
  it to the next at C speed; where a pattern must start at the beginning of a run (JWT,
  AWS key id, ``--option``), a look-behind right after the literal rejects every other
  occurrence in O(1). No two unbounded repetitions in a row can match the same
  characters, so a failed attempt gives back what it took once, at most.
- Secret names are found per secret word (one literal-prefixed pattern each). After the
  word, the rest of the name is taken atomically (``(?=(x{0,64}))\\1``) with at most 64
  characters looked at, then the separator; a longer name is consumed to its end by the
  same match, so no name is scanned twice by one pattern.
- Everything that depends on what lies to the left or far to the right (where a name
  starts, where a value or quoted string ends) is resolved by one Python loop over the
  candidates, left to right: a name's start is looked for no further back than the end of
  the previous name, and the end of a value run and the next closing quote are
  remembered, so that no region is examined twice. Patterns used only with ``match`` at
  a known position (the separator, a value run, the start of a name) are never searched.
- A URL authority holds no ``/``, so the authorities after successive ``://`` never
  overlap; a PEM block without END masks to the end of the text (no END search repeats).
- Known values are found with ``str.find`` (C, one pass each) and the text is rebuilt
  once (``str.replace`` value by value past 1000 occurrences); hostile JSON given to
  :func:`secret_values` is walked 32 levels deep at most and no string over 1 MB is
  decoded.

On a 2-core machine a 10 MB log line takes about 0.1 s (``benchmarks/redact.py``).

Usage::

    from smtk.redact import Masker, secret_values

    masker = Masker(secret_values(os.environ, hyperparameters))
    masker.add(["a-token-learned-later"])  # thread-safe: may run while others mask
    line = masker.mask(line)
    shown = masker.mask_argv(argv)
    record = masker.mask_tree(record)

:func:`redact_text`, :func:`redact_url` (URL credentials only), :func:`redact_mapping`
and :func:`redact_argv` are the same masking as functions, for callers not yet moved to
:class:`Masker`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "****"

_MIN_SECRET_LEN = 4
#: How deep :func:`secret_values` and :meth:`Masker.mask_tree` follow nested containers.
_MAX_DEPTH = 32
#: Strings longer than this are never JSON-decoded by :func:`secret_values`.
_MAX_DECODE = 1 << 20
#: Below this length mask() checks which trigger words occur before running their patterns.
_GATE_LIMIT = 4096
#: More occurrences of known values than this in one text: replaced value by value in C.
_MAX_VALUE_HITS = 1000

# ---------------------------------------------------------------------------------------
# Names

_CONTAINS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "authorization",
    "bearer",
)
_ENDS = ("token", "pass", "pwd", "key", "auth", "cred", "creds", "cookie", "jwt", "signature")
_SPECIAL_TOKENS = ("bostoken", "eostoken", "padtoken", "unktoken", "septoken", "clstoken", "masktoken")
#: The shell's working directories: values are paths, masking them would blank every path.
_NOT_SECRET = frozenset({"pwd", "oldpwd"})
#: Every ASCII byte but a-z and 0-9 (the name is lowered first; non-ASCII is dropped on encoding).
_NOT_ALNUM = bytes(c for c in range(128) if not ("a" <= chr(c) <= "z" or "0" <= chr(c) <= "9"))
_DIGITS = "0123456789"
#: JSON scalars a string may spell: never worth masking wherever they appear.
_TRIVIAL = frozenset({"true", "false", "null", "none"})


def is_secret_name(name: str) -> bool:
    """Whether a variable, hyperparameter, option or key called ``name`` holds a secret.

    The name is normalised (lower case, everything but ``a-z0-9`` dropped); it is secret
    when it contains ``password``, ``passwd``, ``passphrase``, ``secret``, ``credential``,
    ``apikey``, ``accesskey``, ``privatekey``, ``authorization`` or ``bearer``, or ends
    (trailing digits dropped) with ``token``, ``pass``, ``pwd``, ``key``, ``auth``,
    ``cred``, ``creds``, ``cookie``, ``jwt`` or ``signature``, except the tokenizer
    special tokens (``pad_token``, ...) and ``PWD``/``OLDPWD``.
    """
    norm = name.lower().encode("ascii", "ignore").translate(None, _NOT_ALNUM).decode("ascii")
    for word in _CONTAINS:
        if word in norm:
            return True
    stem = norm.rstrip(_DIGITS)
    if stem in _NOT_SECRET or stem.endswith(_SPECIAL_TOKENS):
        return False
    return stem.endswith(_ENDS)


_NAME_CACHE: dict[str, bool] = {}
_NAME_CACHE_SIZE = 4096


def _secret_name_cached(name: str) -> bool:
    """:func:`is_secret_name`, remembered for short names (free text repeats them)."""
    if len(name) > 64:
        return is_secret_name(name)
    known = _NAME_CACHE.get(name)
    if known is None:
        if len(_NAME_CACHE) >= _NAME_CACHE_SIZE:
            _NAME_CACHE.clear()
        known = _NAME_CACHE[name] = is_secret_name(name)
    return known


# ---------------------------------------------------------------------------------------
# Free text. The patterns that search run on the text lowered (ASCII letters only, so that
# indexes match); the ones matched at a known position run on the text itself.

_NAME_CHARS = r"a-z0-9_.\-"
_NAME_SET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# "=" or ":" (not "==", "::" or ":="), after an optional closing quote (plain or escaped).
_SEP_PATTERN = r"(?:\\?[\"'])?[ \t]*(?:=(?!=)|:(?![:=]))[ \t]*"
_SEP = re.compile(_SEP_PATTERN)
# After the secret word only digits and separators up to the end of the name: "token_2".
_AT_END = rf"(?=[0-9_.\-]*(?![{_NAME_CHARS}]))"
# The rest of the name, taken atomically (at most 64 characters looked at), then either the
# separator or, for a longer name, everything up to its end (judged in Python).
_REST = rf"(?=([{_NAME_CHARS}]{{0,64}}))\1(?:(?P<sep>{_SEP_PATTERN})|[{_NAME_CHARS}]+)"
_TRIGGERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (word, re.compile(word + condition + _REST))
    for word, condition in (
        ("pass", rf"(?:word|wd|phrase|{_AT_END})"),
        ("secret", ""),
        ("cred", rf"(?:ential|s?{_AT_END})"),
        (
            "key",
            r"(?:(?<=apikey)|(?<=api[_.\-]key)|(?<=accesskey)|(?<=access[_.\-]key)"
            rf"|(?<=privatekey)|(?<=private[_.\-]key)|{_AT_END})",
        ),
        ("auth", rf"(?:orization|{_AT_END})"),
        ("bearer", ""),
        ("token", _AT_END),
        ("pwd", _AT_END),
        ("cookie", _AT_END),
        ("jwt", _AT_END),
        ("signature", _AT_END),
    )
)
# "--name value" where the name holds a secret word: the lookbehind after the literal
# keeps one attempt per run of dashes; the name is scanned twice at most.
_OPTION = re.compile(
    rf"--(?<![{_NAME_CHARS}]--)(?=[{_NAME_CHARS}]*?(?:{'|'.join(word for word, _ in _TRIGGERS)}))"
    rf"(?=([{_NAME_CHARS}]+))\1[ \t]+"
)
# On the original text from here. Greedy to the end of the window, then back to its last
# character that ends a name.
_LAST_BREAK = re.compile(r"[\s\S]*[^A-Za-z0-9_.\-]")
# A value runs up to whitespace , ; & or a closing bracket or quote.
_VALUE_RUN = re.compile(r"[^\s,;&)\]}>\"'`]*")
_AUTH_SCHEME = re.compile(r"(?:bearer|basic|token|digest)[ \t]+(?=[^\s,;&)\]}>\"'`])", re.IGNORECASE)
_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}

# On the original text: "://" after a scheme, then the authority (which never holds
# "/", so authorities do not overlap) up to its last "@". One attempt per "://".
_URL_USERINFO = re.compile(r"://(?<=[A-Za-z0-9+.\-]://)[^/\s?#\"'<>`\\]+@")
_URL_MASKED = f"://{MASK}@"
_AUTHORITY_STOP = re.compile(r"[/\s?#\"'<>`\\]")

# On the original text: values that are secrets by their shape.
# Each with a character it needs: a one-character "in" (memchr) skips the pattern.
_SHAPES = (
    # (literal parts, one of which the shape contains: a cheap test that skips the scan)
    # AWS access key id; "*" counts as a word character so that masking a neighbour
    # (``AKIA...xoxb-...``) does not make one appear.
    (("AKIA", "ASIA"), re.compile(r"A[KS]IA(?<![A-Za-z0-9*]A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9*])")),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), re.compile(r"gh[pousr]_[A-Za-z0-9]{36,}")),  # GitHub
    (("hf_",), re.compile(r"hf_[A-Za-z0-9]{30,}")),  # Hugging Face
    (("xox",), re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}")),  # Slack
    # JWT: one attempt per run (the lookbehind), each part scanned once.
    (("eyJ",), re.compile(r"eyJ(?<![\w\-]eyJ)[\w\-]{7,}\.eyJ[\w\-]{7,}\.[\w\-]{10,}", re.ASCII)),
)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")


def _ascii_lower(text: str) -> str:
    """``text`` lowered, character for character (so indexes match)."""
    lower = text.lower()
    return lower if len(lower) == len(text) else text.translate(_ASCII_LOWER)


def _run_end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """End of ``pattern`` (a repetition, which always matches) at ``pos``."""
    match = pattern.match(text, pos)
    return match.end() if match is not None else pos


def _mask_values(text: str, values: tuple[str, ...]) -> str:
    """Every occurrence of the known values masked (overlapping ones as one), building the
    result once; with more than 1000 occurrences, ``str.replace`` value by value instead."""
    spans: list[tuple[int, int]] = []
    for value in values:
        size = len(value)
        at = text.find(value)
        while at >= 0:
            if len(spans) >= _MAX_VALUE_HITS:
                for each in values:
                    text = text.replace(each, MASK)
                return text
            spans.append((at, at + size))
            at = text.find(value, at + size)
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    last = 0
    for start, end in spans:
        if start > last or not pieces:
            pieces += (text[last:start], MASK)
            last = end
        elif end > last:
            last = end  # overlaps (or touches) the previous one: one mask
    pieces.append(text[last:])
    return "".join(pieces)


def _mask_pem(text: str) -> str:
    """The bodies of PEM private-key blocks masked (to the end of text without an END line)."""
    if "PRIVATE KEY" not in text:
        return text
    pieces: list[str] = []
    last = pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end = _PEM_END.search(text, begin.end())
        body_end = end.start() if end is not None else len(text)
        if body_end > begin.end():
            pieces += (text[last : begin.end()], MASK)
            last = body_end
        if end is None:
            break
        pos = end.end()
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _mask_shapes(text: str) -> str:
    for parts, pattern in _SHAPES:
        if any(part in text for part in parts):
            text = pattern.sub(MASK, text)
    return text


def _mask_urls(text: str) -> str:
    """``scheme://userinfo@`` -> ``scheme://****@`` (userinfo up to the last ``@``)."""
    return _URL_USERINFO.sub(_URL_MASKED, text) if "@" in text else text


class _Values:
    """Finds the extent of each value, remembering what it found so that no region is
    scanned twice: value starts only move forward (a name begins after the previous name's
    separator), so a run end or closing quote found once answers every later question
    about a position before it."""

    __slots__ = ("_closing", "_run", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._run = (0, -1)  # the last unquoted run scanned: [start, end)
        self._closing: dict[str, tuple[int, int]] = {}  # quote -> (searched from, found or -1)

    def span(self, start: int) -> tuple[int, int, bool]:
        """(mask from, mask to, quoted) for a value beginning at ``start``; empty when none."""
        text = self._text
        size = len(text)
        if start >= size or text[start] == "{":
            return start, start, False  # nothing, or a structure whose names are judged one by one
        if text[start] in "[(":
            start += 1
            if start >= size:
                return start, start, False
        if text[start] in "bBrRuU" and start + 1 < size and text[start + 1] in "\"'":
            start += 1  # a Python literal: b'...' (botocore logs its headers so)
        char = text[start]
        if char in "\"'":
            quote = char
        elif char == "\\" and start + 1 < size and text[start + 1] in "\"'":
            quote = text[start : start + 2]  # an escaped quote: JSON inside a JSON string
        else:
            begin = self._after_scheme(start, size)
            return begin, self._run_end(begin), False
        content = start + len(quote)
        end = self._closing_quote(quote, content)
        end = size if end < 0 else end
        return self._after_scheme(content, end), end, True

    def _after_scheme(self, start: int, end: int) -> int:
        """Where the credential starts: after ``Bearer `` (or Basic, Token, Digest) if present."""
        scheme = _AUTH_SCHEME.match(self._text, start, end)
        return scheme.end() if scheme is not None else start

    def _run_end(self, start: int) -> int:
        begin, end = self._run
        if not begin <= start <= end:
            end = _run_end(_VALUE_RUN, self._text, start)
            self._run = (start, end)
        return end

    def _closing_quote(self, quote: str, start: int) -> int:
        """The first ``quote`` at or after ``start`` (a one-character quote: not escaped by
        an odd number of backslashes), or -1."""
        cached = self._closing.get(quote)
        if cached is not None:
            searched, found = cached
            if searched <= start and (found < 0 or start <= found):
                return found  # no quote between the last search's start and its result
        text = self._text
        found = text.find(quote, start)
        while len(quote) == 1 and found > 0 and text[found - 1] == "\\":
            first = found - 1
            while first > 0 and text[first - 1] == "\\":
                first -= 1
            if (found - first) % 2 == 0:
                break
            found = text.find(quote, found + 1)
        self._closing[quote] = (start, found)
        return found


def _name_start(text: str, done: int, found: int) -> int:
    """Where the name around ``found`` starts (not before ``done``). Looks at most 256
    characters back first: those windows never overlap, nor does the longer fallback."""
    window = max(done, found - 256)
    brk = _LAST_BREAK.match(text, window, found)
    if brk is not None:
        return brk.end()
    if window > done:
        brk = _LAST_BREAK.match(text, done, window)
        return brk.end() if brk is not None else done
    return done


def _mask_inline(text: str, urls: bool) -> tuple[str, bool]:
    """Values of secret names written inline (``NAME=value``, ``--NAME value``, ...), and
    (with ``urls``) whether a masked value held a character that ends a URL authority."""
    lower = _ascii_lower(text)
    gate = len(text) <= _GATE_LIMIT
    # (where the name's secret word or "--" starts, where the name ends,
    #  where the value starts (-1: separator not checked yet), option form)
    candidates: list[tuple[int, int, int, bool]] = []
    words = 0
    for word, pattern in _TRIGGERS:
        if gate and word not in lower:
            continue
        words += 1
        for match in pattern.finditer(lower):
            if match.start("sep") >= 0:
                candidates.append((match.start(), match.end(1), match.end(), False))
            else:
                candidates.append((match.start(), match.end(), -1, False))
    if not words:
        return text, False  # no secret word: no secret name either
    if "--" in lower:
        candidates.extend((m.start(), m.end(1), m.end(), True) for m in _OPTION.finditer(lower))
    if not candidates:
        return text, False
    del lower  # 10 MB less held while the result is built: fewer fresh pages to fault in
    candidates.sort()
    values = _Values(text)
    pieces: list[str] = []
    last = done = 0  # text copied up to; names examined up to
    size = len(text)
    stops = False
    for found, name_end, value_at, option in candidates:
        if found < done:
            continue  # inside a name already judged
        if option or found == done or text[found - 1] not in _NAME_SET:
            name_start = found  # the secret word starts the name (or "--" does)
        else:
            name_start = _name_start(text, done, found)
        done = name_end
        if not _secret_name_cached(text[name_start:name_end]):
            continue
        value = value_at
        if value < 0:
            sep = _SEP.match(text, name_end)
            if sep is None:
                continue
            value = sep.end()
        if option and value < size and text[value] == "-":
            continue  # "--token --lr 0.1": no value, the next option follows
        while True:
            mask_from, mask_to, quoted = values.span(value)
            if mask_to > mask_from and mask_to > last:
                if mask_from > last or not pieces:
                    pieces += (text[last:mask_from], MASK)
                # else a name inside the previous value, whose value goes further: one mask
                new_from = max(mask_from, last)
                if urls and not stops:
                    stops = _AUTHORITY_STOP.search(text, new_from, mask_to) is not None
                last = mask_to
            if not quoted:
                break
            done = max(done, mask_to)  # names inside a quoted value are part of it
            # A quoted string followed by a separator was a key: token: "password": "x".
            sep = _SEP.match(text, mask_to)
            if sep is None or not _secret_name_cached(text[mask_from:mask_to]):
                break
            value = sep.end()
    if not pieces:
        return text, False
    pieces.append(text[last:])
    return "".join(pieces), stops


# ---------------------------------------------------------------------------------------
# Masker


def _longest_first(value: str) -> tuple[int, str]:
    return -len(value), value


def _option_name(item: str) -> str | None:
    """The name of ``--name``/``--name=value``/``-n`` in argv, or None for a non-option."""
    if len(item) < 2 or item[0] != "-" or item[1] in "0123456789.":
        return None
    name = item.lstrip("-").split("=", 1)[0]
    return name or None


class Masker:
    """Masks the known secret values and everything that looks secret; see the module doc.

    ``values`` may grow while other threads mask (:meth:`add` swaps an immutable tuple).
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        """Also mask ``values`` (strings shorter than 4 characters are ignored)."""
        new = {v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LEN}
        if not new:
            return
        with self._lock:
            new.update(self._values)
            self._values = tuple(sorted(new, key=_longest_first))

    @property
    def values(self) -> tuple[str, ...]:
        """The known secret values, longest first."""
        return self._values

    def mask(self, text: str) -> str:
        """``text`` with known values, key blocks, token shapes, URL credentials and inline
        secrets masked; linear in ``len(text)``."""
        if not text:
            return text
        text = _mask_shapes(_mask_pem(_mask_values(text, self._values)))
        urls = "://" in text
        text = _mask_urls(text)  # (each step lets go of the text before: less memory held)
        text, stops = _mask_inline(text, urls)
        if stops:
            # A masked value held the "/" (or space...) that ended an authority: without it
            # the authority may reach a later "@". Mask as a second call would.
            text = _mask_urls(text)
        return text

    def mask_argv(self, argv: Iterable[str]) -> list[str]:
        """argv for display: the value of every secret-named option masked
        (``--hf-token X``, ``--password=X``, ``-token X``), each item also through :meth:`mask`."""
        items = list(argv)
        out: list[str] = []
        index = 0
        while index < len(items):
            item = items[index]
            index += 1
            name = _option_name(item)
            if name is None or not is_secret_name(name):
                out.append(self.mask(item))
            elif "=" in item:
                option, value = item.split("=", 1)
                out.append(f"{option}={MASK}" if value else item)
            else:
                out.append(item)
                if index < len(items):
                    following = _option_name(items[index])
                    # Another secret option is left to be handled as such; anything else
                    # (even "-x") is this option's value.
                    if following is None or not is_secret_name(following):
                        out.append(MASK)
                        index += 1
        return out

    def mask_tree(self, value: Any) -> Any:
        """A copy of a JSON-like tree: strings masked, values under secret-named keys
        replaced by ``****`` (unless None or ""); deeper than 32 levels, ``****``."""
        return self._tree(value, 0)

    def _tree(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if not isinstance(value, (Mapping, list, tuple)):
            return value
        if depth >= _MAX_DEPTH:
            return MASK
        if isinstance(value, Mapping):
            return {
                key: MASK if _hides(key, item) else self._tree(item, depth + 1) for key, item in value.items()
            }
        items = [self._tree(item, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)

    def mask_mapping(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy with secret-named values replaced by ``****`` and the others masked."""
        return {name: MASK if _hides(name, value) else self._tree(value, 0) for name, value in values.items()}


def _hides(name: Any, value: Any) -> bool:
    """Whether ``value`` under the key ``name`` is replaced by the mask."""
    if value is None or (isinstance(value, str) and not value):
        return False
    return is_secret_name(str(name))


# ---------------------------------------------------------------------------------------
# Collecting secret values

_NOT_JSON = object()


def _decode(text: str) -> Any:
    """``text`` decoded if it is a JSON object, array or string (and at most 1 MB)."""
    if len(text) > _MAX_DECODE:
        return _NOT_JSON
    stripped = text.strip()
    if not stripped or stripped[0] not in '{["':
        return _NOT_JSON
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _add(found: set[str], text: str) -> None:
    if len(text) >= _MIN_SECRET_LEN and text.lower() not in _TRIVIAL:
        found.add(text)


def _collect_secret(value: Any, found: set[str], depth: int) -> None:
    """Every string in ``value``, which is under a secret name."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        _add(found, value)
        decoded = _decode(value)
        if isinstance(decoded, str):
            _add(found, value.strip()[1:-1])  # as it appears inside JSON text
            _collect_secret(decoded, found, depth + 1)  # itself, and what it encodes
        elif decoded is not _NOT_JSON:
            _collect_secret(decoded, found, depth + 1)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_secret(item, found, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_secret(item, found, depth + 1)
    # numbers, booleans, None: masking "512" everywhere would hide nothing and break logs


def _collect(value: Any, found: set[str], depth: int) -> None:
    """The secrets under secret-named keys anywhere inside ``value``."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            if is_secret_name(str(name)):
                _collect_secret(item, found, depth + 1)
            else:
                _collect(item, found, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, found, depth + 1)
    elif isinstance(value, str):
        decoded = _decode(value)
        if decoded is not _NOT_JSON:
            _collect(decoded, found, depth + 1)


def secret_values(*sources: Mapping[str, Any]) -> list[str]:
    """The string forms of every secret-named value in ``sources``, longest first.

    Nested JSON is walked: dicts and lists, and strings that are JSON objects, arrays or
    strings (hyperparameters.json stores values JSON-encoded), to 32 levels, decoding no
    string over 1 MB. Both forms of a JSON-encoded string are kept (``"\\"abc\\""`` gives
    it and ``abc``). Strings under 4 characters, ``true``/``false``/``null``/``none`` and
    non-string scalars are left out.
    """
    found: set[str] = set()
    for source in sources:
        _collect(source, found, 0)
    return sorted(found, key=_longest_first)


# ---------------------------------------------------------------------------------------
# The functions the rest of the code base calls

_PLAIN = Masker()


def redact_url(text: str) -> str:
    """``https://user:pass@host/x`` -> ``https://****@host/x`` (URL credentials only)."""
    return _mask_urls(text)


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with secret-named values replaced by ``****`` and the others masked."""
    return _PLAIN.mask_mapping(values)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text with ``secrets`` and everything that looks secret masked (:meth:`Masker.mask`)."""
    return Masker(secrets).mask(text)


def redact_argv(argv: Iterable[str], secrets: Iterable[str] = ()) -> list[str]:
    """argv for display, secret option values and ``secrets`` masked (:meth:`Masker.mask_argv`)."""
    return Masker(secrets).mask_argv(argv)
