"""The documentation against the code: variables, command options, and the strict site build.

- every ``SMTK_*`` name in ``src/smtk`` is in docs/environment-variables.md, and every
  ``SMTK_*`` name in the docs exists in the source (no stale settings);
- the ``SM_*`` set ``Environment.to_env_vars()`` produces is exactly the set listed under
  "Variables smtk writes for your process" (``SM_CHANNEL_<NAME>``/``SM_HP_<KEY>`` as patterns);
- every variable ``childenv.child_env()`` adds is documented;
- every long option of every ``smtk`` command is documented on its page;
- docs/architecture.md's module map names every module of ``src/smtk``;
- ``mkdocs build --strict`` succeeds (broken links, anchors, pages left out of the nav).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtk.cli import COMMANDS
from smtk.environment import Environment
from smtk.launch.childenv import child_env
from tests.helpers.jobtree import clean_env, make_tree

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "smtk"
DOCS = REPO / "docs"
ENV_DOC = DOCS / "environment-variables.md"
WRITES_HEADING = "## Variables smtk writes for your process"

# Names ending in "_" are prefixes written as SMTK_SYNC_* or SM_CHANNEL_<NAME>.
_SMTK = re.compile(r"SMTK_[A-Z0-9_]+")
_SM = re.compile(r"\bSM_[A-Z0-9_]+")

#: The pages that document each command's options (any one of them may).
COMMAND_PAGES: dict[str, tuple[str, ...]] = {
    "env": ("environment.md", "user-guide.md"),
    "plan": ("user-guide.md", "distributed.md"),
    "local": ("local.md",),
    "pipe-feed": ("channels.md", "local.md"),
}

CHANNELS = ("train", "eval")
HYPERPARAMETERS = {"epochs": 3, "batch-size": 64, "use_amp": True, "sagemaker_program": "train.py"}
RESOURCE = {
    "current_host": "algo-2",
    "hosts": ["algo-1", "algo-2"],
    "current_group_name": "homogeneousCluster",
    "current_instance_type": "ml.p4d.24xlarge",
    "instance_groups": [
        {
            "instance_group_name": "homogeneousCluster",
            "instance_type": "ml.p4d.24xlarge",
            "hosts": ["algo-1", "algo-2"],
        }
    ],
    "network_interface_name": "eth0",
}
TOPOLOGY = [
    {"hostName": "algo-1", "capacityUnitId": "cu-1"},
    {"hostName": "algo-2", "capacityUnitId": "cu-1"},
]


def _names(pattern: re.Pattern[str], text: str) -> set[str]:
    return {name for name in pattern.findall(text) if not name.endswith("_")}


def _source_smtk_names() -> dict[str, str]:
    """``SMTK_*`` names in the source text -> a file using it, minus pure Python identifiers.

    A name that occurs only as an identifier (``SMTK_PREFIX: Final = "smtk_"``) is a
    constant of the code, not an environment variable; one that occurs in a string, a
    docstring, a comment or as a keyword (``values.update(SMTK_RANK=...)``) is a variable.
    """
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        in_text = _names(_SMTK, text)
        if not in_text:
            continue
        tree = ast.parse(text)
        identifiers: set[str] = set()
        as_data: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                identifiers.add(node.id)
            elif isinstance(node, ast.Attribute):
                identifiers.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                identifiers.add(node.name)
            elif isinstance(node, ast.alias):
                identifiers.add(node.asname or node.name)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                as_data |= _names(_SMTK, node.value)
            elif isinstance(node, ast.keyword) and node.arg:
                as_data |= _names(_SMTK, node.arg)
        comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
        as_data |= _names(_SMTK, comments)
        for name in in_text:
            if name not in identifiers or name in as_data:
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same level."""
    start = text.index(heading) + len(heading)
    level = heading.split(" ", 1)[0]
    following = re.search(rf"^{level} ", text[start:], re.M)
    return text[start : start + following.start()] if following else text[start:]


def _environment(tmp_path: Path, *, topology: bool) -> Environment:
    resource = {**RESOURCE, "topology": TOPOLOGY} if topology else RESOURCE
    root = make_tree(
        tmp_path / ("topo" if topology else "plain"),
        hyperparameters=HYPERPARAMETERS,
        inputdataconfig={
            name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in CHANNELS
        },
        resourceconfig=resource,
        code={"train.py": "print('hi')\n"},
    )
    return Environment(root=root, environ=clean_env(root, TRAINING_JOB_NAME="job-1"))


def _patterned(name: str) -> bool:
    """``SM_CHANNEL_TRAIN``, ``SM_HP_EPOCHS``: documented as patterns, not one by one."""
    return name.startswith(("SM_CHANNEL_", "SM_HP_"))


# -- (1) SMTK_* settings ------------------------------------------------------------------


def test_every_smtk_variable_in_the_source_is_documented() -> None:
    documented = _names(_SMTK, ENV_DOC.read_text(encoding="utf-8"))
    source = _source_smtk_names()
    assert source, "found no SMTK_* name in src/smtk: the scan is broken"
    missing = {name: where for name, where in source.items() if name not in documented}
    assert not missing, f"add these to docs/environment-variables.md (name: a file using it): {missing}"


def test_every_documented_smtk_variable_exists_in_the_source() -> None:
    source = set(_source_smtk_names())
    stale = {}
    for page in sorted(DOCS.glob("*.md")):
        unknown = _names(_SMTK, page.read_text(encoding="utf-8")) - source
        if unknown:
            stale[page.name] = sorted(unknown)
    assert not stale, f"documented but not in src/smtk (renamed or removed?): {stale}"


def test_identifiers_are_not_mistaken_for_variables() -> None:
    # SMTK_PREFIX is the Python constant for the "smtk_" hyperparameter prefix, not a variable.
    assert "SMTK_PREFIX" not in _source_smtk_names()
    assert "SMTK_GRACE_PERIOD" in _source_smtk_names()


# -- (2) the SM_* set ------------------------------------------------------------------------


def test_sm_variables_produced_are_exactly_those_documented(tmp_path: Path) -> None:
    env = _environment(tmp_path, topology=True)
    produced = env.to_env_vars()
    expected_patterned = {f"SM_CHANNEL_{c.upper()}" for c in CHANNELS} | {
        f"SM_HP_{k.upper()}" for k in HYPERPARAMETERS if not k.startswith("sagemaker_")
    }
    assert expected_patterned <= set(produced), (
        "the representative tree no longer produces its own channels/hps"
    )
    fixed = {name for name in produced if name not in expected_patterned}
    assert "SM_TOPOLOGY" in fixed

    text = ENV_DOC.read_text(encoding="utf-8")
    writes = _section(text, WRITES_HEADING)
    listed = {name for name in _names(_SM, writes) if not _patterned(name)}
    assert not fixed - listed, f"produced but not listed under {WRITES_HEADING!r}: {sorted(fixed - listed)}"
    assert not listed - fixed, f"listed under {WRITES_HEADING!r} but never produced: {sorted(listed - fixed)}"
    for pattern in ("SM_CHANNEL_<NAME>", "SM_HP_<KEY>"):
        assert pattern in writes


def test_sm_topology_only_with_a_topology(tmp_path: Path) -> None:
    # The page says SM_TOPOLOGY exists only when resourceconfig.json has a non-empty topology.
    assert "SM_TOPOLOGY" not in _environment(tmp_path, topology=False).to_env_vars()
    assert "only when" in next(
        line
        for line in ENV_DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `SM_TOPOLOGY`")
    )


# -- (3) what the launchers add --------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["process", "torchrun", "mpi"])
def test_child_env_variables_are_documented(tmp_path: Path, launcher: str) -> None:
    env = _environment(tmp_path, topology=False)
    values = child_env(env, launcher)
    assert values["SMTK_LAUNCHER"] == launcher
    writes = _section(ENV_DOC.read_text(encoding="utf-8"), WRITES_HEADING)
    missing = sorted(name for name in values if not _patterned(name) and f"`{name}`" not in writes)
    assert not missing, f"child_env() sets these but {WRITES_HEADING!r} does not list them: {missing}"


# -- (4) command options -----------------------------------------------------------------------


def _long_options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text)) - {"--help"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_options_are_documented(command: str) -> None:
    module = COMMANDS[command][0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    environ = {k: v for k, v in os.environ.items() if k != "SAGEMAKER_BASE_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "smtk", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    options = _long_options(result.stdout)
    assert options, f"`smtk {command} --help` lists no options:\n{result.stdout}"
    pages = COMMAND_PAGES.get(command) or tuple(p.name for p in DOCS.glob("*.md"))
    text = "\n".join((DOCS / p).read_text(encoding="utf-8") for p in pages if (DOCS / p).exists())
    missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))
    assert not missing, f"`smtk {command}` options not documented in {', '.join(pages)}: {missing}"
    assert f"smtk {command}" in (DOCS / "index.md").read_text(encoding="utf-8")


# -- the module map ----------------------------------------------------------------------------


def test_architecture_module_map_lists_every_module() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    block = text[text.index("## Module map") :]
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        package = rel.name == "__init__.py" and rel.parent != Path(".")
        wanted = f"{rel.parent.name}/" if package else rel.name
        # A top-level module must appear at the top level of the tree (`├── name`), not only
        # as a same-named module of a subpackage (`│   ├── name`).
        indent = r"^├── " if rel.parent == Path(".") else r""
        if not re.search(rf"{indent}(?<![\w/]){re.escape(wanted)}", block, re.M):
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md's module map lacks: {missing}"


# -- (5) the site -------------------------------------------------------------------------------


def test_mkdocs_strict_build(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    command = str(mkdocs) if mkdocs.exists() else shutil.which("mkdocs")
    if command is None:
        pytest.skip("mkdocs is not installed (it is in the `test` extra)")
    result = subprocess.run(
        [command, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        warnings or [result.stdout, result.stderr]
    )
    assert (tmp_path / "site" / "index.html").exists()
