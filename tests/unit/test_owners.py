"""One owner per concern, checked in the source (docs/architecture.md, "One owner per concern").

- only ``settings.py`` reads ``SMTK_*`` variables;
- only ``log.py`` writes to smtk's own stdout and stderr (the masking choke point): no
  ``print``, no ``sys.stdout``/``sys.stderr``, no other logging handler;
- only ``supervisor.py`` waits for the children it starts (``Popen`` elsewhere is limited to
  the named short-lived helpers);
- only ``stop.py`` installs SIGTERM/SIGINT handlers.

Each check is an AST scan of ``src/smtk`` that names the file and line of a breach.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "smtk"


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield str(path.relative_to(SRC)), ast.parse(path.read_text(encoding="utf-8"))


def _is_smtk_name(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("SMTK_"):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return None


def _constants(tree: ast.Module) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            value = node.value.value
            if isinstance(value, str) and value.startswith("SMTK_"):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = value
    return found


def smtk_reads(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Where ``tree`` reads an ``SMTK_*`` variable from a mapping."""
    constants = _constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "getenv", "pop"):
                name = _is_smtk_name(node.args[0], constants)
                if name:
                    yield node.lineno, name
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            name = _is_smtk_name(node.slice, constants)
            if name:
                yield node.lineno, name
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            name = _is_smtk_name(node.left, constants)
            if name:
                yield node.lineno, name


def test_only_the_settings_module_reads_smtk_variables() -> None:
    breaches = [
        f"{rel}:{line} reads {name}"
        for rel, tree in modules()
        if rel != "settings.py"
        for line, name in smtk_reads(tree)
    ]
    assert not breaches, "read these through smtk.settings (env.settings):\n" + "\n".join(breaches)


def test_the_scan_sees_a_read() -> None:
    tree = ast.parse('import os\nX = "SMTK_Y"\nos.environ.get("SMTK_Z")\nenv[X]\n"SMTK_Q" in env\n')
    assert [name for _, name in smtk_reads(tree)] == ["SMTK_Z", "SMTK_Y", "SMTK_Q"]


def _writes_to_our_streams(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            yield node.lineno, "print()"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
            and node.attr in ("stdout", "stderr", "__stdout__", "__stderr__")
        ):
            yield node.lineno, f"sys.{node.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("StreamHandler", "FileHandler", "basicConfig"):
                yield node.lineno, f"logging.{node.func.attr}"
            if (
                node.func.attr == "write"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "os"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in (1, 2)
            ):
                yield node.lineno, "os.write to fd 1/2"


def _function_of(tree: ast.Module, line: int) -> str:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            end = getattr(node, "end_lineno", node.lineno)
            if node.lineno <= line <= end:
                return node.name
    return ""


def test_every_byte_smtk_writes_goes_through_the_masking_choke_point() -> None:
    allowed = {("log.py", None), ("cli.py", "_exit")}  # cli._exit only flushes at exit
    breaches = []
    for rel, tree in modules():
        for line, what in _writes_to_our_streams(tree):
            where = _function_of(tree, line)
            if (rel, None) in allowed or (rel, where) in allowed:
                continue
            breaches.append(f"{rel}:{line} {what}")
    assert not breaches, "write through smtk.log (log.write or the logger):\n" + "\n".join(breaches)


def test_only_the_supervisor_waits_for_children_it_started() -> None:
    # Short-lived helpers with their own timeouts, and the holders of the namespaces.
    helpers = {
        "hardware.py", "launch/worker.py", "local/container.py", "local/netns.py", "supervisor.py",
        "scheduler/slurm.py",  # scontrol show hostnames, once, with a timeout
    }  # fmt: skip
    breaches = []
    for rel, tree in modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("Popen", "run", "call", "check_output")
                and isinstance(node.value, ast.Name)
                and node.value.id == "subprocess"
                and rel not in helpers
            ):
                breaches.append(f"{rel}:{node.lineno} subprocess.{node.attr}")
    assert not breaches, "run children through smtk.supervisor:\n" + "\n".join(breaches)


def test_only_the_stop_installs_signal_handlers() -> None:
    breaches = []
    for rel, tree in modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "signal"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "signal"
                and rel not in ("stop.py", "launch/rank.py")  # rank: re-raises its child's signal (SIG_DFL)
            ):
                breaches.append(f"{rel}:{node.lineno}")
    assert not breaches, "take the job's smtk.stop.Stop instead:\n" + "\n".join(breaches)
