"""The user's entry point: which program to run and what kind it is.

Kinds (CONTRACT.md section 4), decided in the reference's order:

- ``function``: ``SAGEMAKER_TRAINING_MODULE=pkg.mod:function`` is set; the module is
  imported and the function called with no arguments;
- ``shell``: the name ends in ``.sh``; run directly when the file starts with ``#!``
  (or is an ELF binary), else with ``/bin/sh``;
- ``package``: the code dir holds ``setup.py``, or a ``pyproject.toml`` with a
  ``[project]`` or ``[build-system]`` table; it is pip-installed and the entry point
  runs as ``python -m <module>``;
- ``python``: the name ends in ``.py``; run as ``python <script>``;
- ``shell`` again for anything else (a command such as ``train`` or ``run``).

The name (``SAGEMAKER_PROGRAM``, else the ``sagemaker_program`` hyperparameter) is
validated like the reference 5.1.4 does, and more: it must be a plain relative path
(letters, digits, ``. _ + - /``; no ``.``/``..`` segment; no leading ``-`` or ``/``),
its real path must stay inside the code dir and it must be a regular file. Every
failure is an :class:`~smtk.errors.EntryPointError` that lists what the code dir holds.

::

    from smtk.entry_point import resolve, ensure_executable
    entry = resolve(env)          # reads the code dir, changes nothing
    ensure_executable(entry)      # u+x on a #! script that lacks it (before launch)
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtk.errors import EntryPointError
from smtk.files import read_regular, read_text
from smtk.log import logger

if TYPE_CHECKING:
    from smtk.environment import Environment

EntryKind = Literal["python", "shell", "package", "function"]

#: The reference 5.1.4's rule for a safe entry point name.
SAFE_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYPROJECT_TABLE = re.compile(r"^[ \t]*\[(project|build-system)\][ \t]*(#.*)?$", re.M)
#: How many code dir entries an error message lists.
LISTING_LIMIT = 20

HOW_TO_SET = (
    "set the SAGEMAKER_PROGRAM environment variable or the 'sagemaker_program' hyperparameter "
    "(entry_point= in the SageMaker Python SDK) to a file in the code dir, e.g. 'train.py', "
    "or SAGEMAKER_TRAINING_MODULE to 'package.module:function'"
)


@dataclass(frozen=True)
class EntryPoint:
    """A validated entry point inside ``code_dir``."""

    kind: EntryKind
    #: As configured: ``train.py``, ``scripts/run.sh``, ``pkg.mod:fn``.
    name: str
    code_dir: str
    #: ``package``: the module run with ``-m``; ``function``: the module to import.
    module: str | None = None
    #: ``function``: the callable's name.
    function: str | None = None
    #: ``shell``: whether the file can be executed directly (a ``#!`` line or an ELF
    #: binary); else it is run with ``/bin/sh``.
    has_shebang: bool = False

    @property
    def path(self) -> str | None:
        """The file in the code dir (``None`` for a function, or a package module not found)."""
        if self.kind == "function":
            return None
        candidate = os.path.join(self.code_dir, self.name)
        return candidate if os.path.isfile(candidate) else None


def resolve(env: Environment) -> EntryPoint:
    """The entry point ``env`` asks for, validated against the code dir.

    Reads the code dir but changes nothing (``smtk plan`` calls it too); see
    :func:`ensure_executable` for the one change a launch may need.
    """
    code_dir = env.paths.code_dir
    framework_module = env.framework_module
    if framework_module:
        return _function_entry(framework_module, code_dir)
    name = env.user_entry_point
    if name is None or name == "":
        raise EntryPointError(
            "no entry point configured",
            hint=f"{HOW_TO_SET}; the code dir {code_dir} contains: {describe_dir(code_dir)}",
        )
    return resolve_program(name, code_dir)


def resolve_program(name: str, code_dir: str) -> EntryPoint:
    """Validate the program ``name`` inside ``code_dir`` and decide its kind."""
    _check_name(name, code_dir)
    kind = program_kind(name, code_dir)
    path = os.path.join(code_dir, name)
    if kind == "package":
        module = _module_of(name, code_dir)
        if os.path.lexists(path):
            _check_file(name, code_dir)
        elif not _module_source_exists(module, code_dir):
            # The module may come from the installed package (a src/ layout, package_dir
            # mappings): pip install decides, so only warn here.
            logger.warning(
                "entry point %r: no %s or %s in %s; relying on the installed package to provide module %r",
                name,
                name,
                module.replace(".", "/") + ".py",
                code_dir,
                module,
            )
        return EntryPoint("package", name, code_dir, module=module)
    _check_file(name, code_dir)
    if kind == "python":
        return EntryPoint("python", name, code_dir)
    return EntryPoint("shell", name, code_dir, has_shebang=_is_directly_executable(path))


def program_kind(name: str, code_dir: str) -> EntryKind:
    """The reference's order: ``.sh`` -> shell; a package -> package; ``.py`` -> python; else shell."""
    if name.endswith(".sh"):
        return "shell"
    if is_package_dir(code_dir):
        return "package"
    if name.endswith(".py"):
        return "python"
    return "shell"


def is_package_dir(code_dir: str) -> bool:
    """Whether ``code_dir`` is a pip-installable project.

    ``setup.py`` (the reference's only rule), or a ``pyproject.toml`` that declares a
    ``[project]`` or ``[build-system]`` table. A ``pyproject.toml`` holding only tool
    settings (ruff, black, pytest) does not make a package: installing it would fail
    or build an empty "UNKNOWN" distribution.
    """
    if os.path.isfile(os.path.join(code_dir, "setup.py")):
        return True
    text = read_text(os.path.join(code_dir, "pyproject.toml"), 1 << 20)  # never blocks on a FIFO
    return text is not None and bool(_PYPROJECT_TABLE.search(text))


def ensure_executable(entry: EntryPoint) -> None:
    """Add ``u+x`` to a shell entry point that is run directly but lacks it.

    The reference makes every command entry point world-writable (``chmod 0o777``);
    smtk adds only the owner's execute bit, and only where it is needed.
    """
    if entry.kind != "shell" or not entry.has_shebang:
        return
    path = os.path.join(entry.code_dir, entry.name)
    mode = os.stat(path).st_mode
    if os.access(path, os.X_OK):
        return
    try:
        os.chmod(path, stat.S_IMODE(mode) | stat.S_IXUSR)
    except OSError as exc:
        raise EntryPointError(
            f"entry point {entry.name!r} starts with '#!' but is not executable and cannot be made so "
            f"({exc.strerror})",
            hint=f"add the execute bit where the file is built (chmod u+x {entry.name})",
        ) from exc
    logger.info("entry point %s: added the owner's execute bit (u+x)", entry.name)


def describe_dir(code_dir: str, limit: int = LISTING_LIMIT) -> str:
    """A one-line listing of ``code_dir`` for error messages (directories end in ``/``)."""
    try:
        names = sorted(os.listdir(code_dir))
    except FileNotFoundError:
        return "nothing (the directory does not exist)"
    except OSError as exc:
        return f"<unreadable: {exc.strerror}>"
    if not names:
        return "nothing (the directory is empty)"
    shown = [n + "/" if os.path.isdir(os.path.join(code_dir, n)) else n for n in names[:limit]]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(shown) + more


def suggestion(code_dir: str, name: str = "") -> str | None:
    """The script ``name`` was most likely meant to be: the closest ``.py``/``.sh`` file
    in ``code_dir`` (``trian.py`` -> ``train.py``), else the only one there is."""
    try:
        names = os.listdir(code_dir)
    except OSError:
        return None
    scripts = sorted(
        n
        for n in names
        if n.endswith((".py", ".sh")) and n != "setup.py" and os.path.isfile(os.path.join(code_dir, n))
    )
    if name:
        close = difflib.get_close_matches(name, scripts, n=1, cutoff=0.8)
        if close:
            return close[0]
    return scripts[0] if len(scripts) == 1 else None


# -- internals -------------------------------------------------------------------------


def _function_entry(value: str, code_dir: str) -> EntryPoint:
    module, sep, function = value.partition(":")
    parts = module.split(".")
    if not sep or not all(_IDENTIFIER.fullmatch(p) for p in parts) or not _IDENTIFIER.fullmatch(function):
        raise EntryPointError(
            f"SAGEMAKER_TRAINING_MODULE: expected 'package.module:function' (Python identifiers), "
            f"found {value!r}"
        )
    return EntryPoint("function", value, code_dir, module=module, function=function)


def _fail(name: str, code_dir: str, problem: str) -> EntryPointError:
    hint = f"the code dir {code_dir} contains: {describe_dir(code_dir)}"
    suggested = suggestion(code_dir, name)
    if suggested is not None and suggested != name:
        hint += f"; did you mean {suggested!r}?"
    return EntryPointError(f"entry point {name!r}: {problem}", hint=hint)


def _check_name(name: str, code_dir: str) -> None:
    if name.startswith("-"):
        raise _fail(name, code_dir, "must not start with '-' (it would be read as an option)")
    if name.startswith("/"):
        raise _fail(name, code_dir, "must be relative to the code dir, not an absolute path")
    if not SAFE_NAME.fullmatch(name):  # fullmatch: "$" alone accepts a trailing newline
        bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9._+/-]", c)})
        detail = f"contains {', '.join(repr(c) for c in bad)}" if bad else "is not a plain relative path"
        raise _fail(name, code_dir, f"{detail}; use only letters, digits and '. _ + - /'")
    if any(segment in (".", "..") for segment in name.split("/")):
        raise _fail(name, code_dir, "must not contain '.' or '..' path segments")


def _check_file(name: str, code_dir: str) -> None:
    root = os.path.realpath(code_dir)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root:
        raise _fail(name, code_dir, f"resolves to {target}, outside the code dir")
    if not os.path.lexists(os.path.join(root, name)):
        raise _fail(name, code_dir, "no such file in the code dir")
    if not os.path.exists(target):
        raise _fail(name, code_dir, "is a dangling symbolic link")
    if not os.path.isfile(target):
        raise _fail(name, code_dir, "is not a regular file")


def _module_of(name: str, code_dir: str) -> str:
    # The reference runs `python -m <name without .py>`, which breaks for a path such as
    # pkg/train.py; smtk turns the path into the dotted module name.
    module = name.removesuffix(".py").replace("/", ".")
    if not all(_IDENTIFIER.fullmatch(part) for part in module.split(".")):
        raise _fail(name, code_dir, f"cannot be run with 'python -m': {module!r} is not a module name")
    return module


def _module_source_exists(module: str, code_dir: str) -> bool:
    base = os.path.join(code_dir, *module.split("."))
    return any(os.path.isfile(candidate) for candidate in (base + ".py", os.path.join(base, "__main__.py")))


def _is_directly_executable(path: str) -> bool:
    head = read_regular(path, 4) or b""
    return head.startswith(b"#!") or head == b"\x7fELF"
