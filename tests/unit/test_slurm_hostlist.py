"""Slurm's node lists expanded as Slurm expands them (smtk.scheduler.hostlist).

The table holds the examples of Slurm's own documentation (slurm.conf(5) "NodeName",
the hostlist functions' manual, srun(1)) plus the corner cases measured with Slurm
22.05's ``scontrol show hostnames``; when ``scontrol`` is installed, the table is
checked against it too, and generated expressions are compared with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtk.errors import ConfigError
from smtk.scheduler import slurm
from smtk.scheduler.hostlist import MAX_GROUPS, MAX_RANGE, HostlistError, expand

#: expression -> the names, in order (Slurm's documentation first, then measured corners).
EXAMPLES: list[tuple[str, list[str]]] = [
    # slurm.conf(5), NodeName: ranges, lists, fixed widths, several groups
    ("linux[0-3,128]", ["linux0", "linux1", "linux2", "linux3", "linux128"]),
    ("lx[15,18,32-33]", ["lx15", "lx18", "lx32", "lx33"]),
    ("linux[0000-0002]", ["linux0000", "linux0001", "linux0002"]),
    ("rack[0-1]_blade[0-2]", [f"rack{r}_blade{b}" for r in range(2) for b in range(3)]),
    # the hostlist functions' manual
    ("tux[0-5,12,20-25]", [f"tux{i}" for i in [*range(6), 12, *range(20, 26)]]),
    ("node1,node[2-5,12]", ["node1", "node2", "node3", "node4", "node5", "node12"]),
    # srun(1): a list of names and ranges
    ("host1,host[5-7]", ["host1", "host5", "host6", "host7"]),
    # measured with scontrol show hostnames (Slurm 22.05)
    ("algo-[1-2]", ["algo-1", "algo-2"]),
    ("tux[1-10]", [f"tux{i}" for i in range(1, 11)]),
    ("tux[001-10]", [f"tux{i:03d}" for i in range(1, 11)]),
    ("tux[9-010]", ["tux9", "tux10"]),
    ("x[5,1-2]", ["x5", "x1", "x2"]),
    ("x[1,1-2]", ["x1", "x1", "x2"]),
    ("a,a,b", ["a", "a", "b"]),
    ("a b\tc\nd", ["a", "b", "c", "d"]),
    (" a , b ", ["a", "b"]),
    ("a,,b,", ["a", "b"]),
    ("x[1-]", ["x1"]),
    ("x[00]", ["x00"]),
    ("[1-2]", ["1", "2"]),
    ("x.y[1-2]", ["x.y1", "x.y2"]),
    ("a]b,c", ["a]b", "c"]),
    ("x[1-2][3-4]", ["x13", "x14", "x23", "x24"]),
    ("x[1-3,5]y[7-8]", [f"x{a}y{b}" for a in (1, 2, 3, 5) for b in (7, 8)]),
    # three groups or more: the group before the last varies slowest (Slurm's order)
    ("x[1-2]x[1-2]x[1-2]", ["x1x1x1", "x1x1x2", "x2x1x1", "x2x1x2", "x1x2x1", "x1x2x2", "x2x2x1", "x2x2x2"]),
    (
        "n[0-1]c[0-1]g[0-1]",
        [f"n{a}c{b}g{c}" for b in range(2) for a in range(2) for c in range(2)],
    ),
]

#: Expressions Slurm rejects ("Invalid hostlist").
REJECTED = [
    "x[3-1]",  # ends before it starts
    "x[]",
    "x[-1]",
    "x[1--2]",
    "x[1-2,]",
    "x[a-b]",
    "tux[1-3]-ib",  # nothing may follow the last group
    "x[1-2]y",
    "x[1-2].dom",
    "x[1-2]a[3]b",
    "x[[1-2]]",
    f"x[1-{MAX_RANGE + 1}]",  # more than 65,536 in one range
    "linux[0-64/4]",  # the step form of later versions
    "a[1-0][0][0]",  # a bad range before the last group (scontrol only logs it)
]


def _scontrol() -> str | None:
    return shutil.which("scontrol")


@pytest.fixture(scope="module")
def scontrol_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """scontrol reads slurm.conf even for ``show hostnames``: a minimal one does."""
    if _scontrol() is None:
        pytest.skip("scontrol is not installed (apt-get install slurm-client; scripts/test.sh does it)")
    conf = tmp_path_factory.mktemp("slm-conf") / "slurm.conf"
    conf.write_text("ClusterName=slm\nSlurmctldHost=localhost\n")
    yield {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_CONF": str(conf)}


def _show_hostnames(expression: str, env: dict[str, str]) -> list[str] | None:
    proc = subprocess.run(
        ["scontrol", "show", "hostnames", expression], capture_output=True, text=True, env=env, check=False
    )
    # 22.05 exits 0 for an invalid list: it prints "Invalid hostlist" and no name. A bad
    # range in a group before the last of three or more is only logged ("error: ...
    # Invalid range"), and the names of that group dropped: smtk rejects the list.
    names = proc.stdout.split()
    rejected = "Invalid hostlist" in proc.stderr or "error:" in proc.stderr
    return names if proc.returncode == 0 and names and not rejected else None


@pytest.mark.parametrize(("expression", "names"), EXAMPLES)
def test_documented_and_measured_examples(expression: str, names: list[str]) -> None:
    assert expand(expression) == names


@pytest.mark.parametrize("expression", REJECTED)
def test_what_slurm_rejects_is_an_error_naming_the_expression(expression: str) -> None:
    with pytest.raises(HostlistError, match="host list"):
        expand(expression)


def test_unbalanced_brackets_are_errors() -> None:
    # scontrol prints mangled names for these ("x[1,2" -> "x]", "2"); smtk refuses them.
    for expression in ("x[1,2", "x[1-2", "x[1-2],y[3"):
        with pytest.raises(HostlistError, match="never closed"):
            expand(expression)


@pytest.mark.parametrize(
    ("expression", "match"),
    [
        ("a[0]" * (MAX_GROUPS + 1), "bracket groups"),
        ("n[0-65535]m[0-65535]", "names"),
        ("n[0-999]," * 1001, "names"),
    ],
)
def test_hostile_expressions_are_bounded_errors(expression: str, match: str) -> None:
    with pytest.raises(HostlistError, match=match):
        expand(expression)


def test_a_full_range_is_linear() -> None:
    names = expand(f"n[00000-{MAX_RANGE - 1}]")
    assert len(names) == MAX_RANGE and names[0] == "n00000" and names[-1] == f"n{MAX_RANGE - 1}"


@pytest.mark.parametrize(("expression", "names"), EXAMPLES)
def test_the_table_is_what_scontrol_says(
    expression: str, names: list[str], scontrol_env: dict[str, str]
) -> None:
    assert _show_hostnames(expression, scontrol_env) == names


@pytest.mark.parametrize("expression", REJECTED)
def test_scontrol_rejects_the_rejected(expression: str, scontrol_env: dict[str, str]) -> None:
    assert _show_hostnames(expression, scontrol_env) is None


# -- generated expressions, compared with scontrol ---------------------------------------------

_TEXT = st.text(alphabet="abxyz-_.0123456789", min_size=0, max_size=3)


@st.composite
def _part(draw: st.DrawFn) -> str:
    low = draw(st.integers(0, 12))
    width = draw(st.integers(1, 3))
    text = str(low).zfill(width)
    form = draw(st.sampled_from(["single", "range", "range", "open"]))
    if form == "single":
        return text
    if form == "open":
        return text + "-"
    high = draw(st.integers(max(low - 2, 0), low + 4))  # sometimes before low: both reject it
    return f"{text}-{str(high).zfill(draw(st.integers(1, 3)))}"


@st.composite
def _name(draw: st.DrawFn) -> str:
    groups = draw(st.integers(0, 3))
    name = draw(st.text(alphabet="abxyz", min_size=1, max_size=3)) + draw(_TEXT)
    for index in range(groups):
        parts = draw(st.lists(_part(), min_size=1, max_size=3))
        name += "[" + ",".join(parts) + "]"
        if index < groups - 1 or draw(st.integers(0, 9)) == 0:  # rarely text after the last group
            name += draw(_TEXT)
    return name


@st.composite
def _expression(draw: st.DrawFn) -> str:
    names = draw(st.lists(_name(), min_size=1, max_size=3))
    separators = [draw(st.sampled_from([",", ",", " ", ", "])) for _ in names[1:]]
    out = names[0]
    for separator, name in zip(separators, names[1:], strict=True):
        out += separator + name
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=_expression())
def test_generated_expressions_expand_as_scontrol_expands_them(
    expression: str, scontrol_env: dict[str, str]
) -> None:
    expected = _show_hostnames(expression, scontrol_env)
    if expected is None:
        with pytest.raises(HostlistError):
            expand(expression)
    else:
        assert expand(expression) == expected


# -- smtk.scheduler.slurm.expand: scontrol first, the parser otherwise --------------------------


def test_expand_without_scontrol_uses_the_parser(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}  # no scontrol there
    assert slurm.expand("rack[0-1]_blade[0-1]", env) == [
        "rack0_blade0",
        "rack0_blade1",
        "rack1_blade0",
        "rack1_blade1",
    ]
    with pytest.raises(ConfigError, match="node list"):
        slurm.expand("tux[1-3]-ib", env)


def test_expand_uses_scontrol_when_it_answers(tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text(
        '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "from-scontrol-1\\nfrom-scontrol-2\\n"\n'
    )
    fake.chmod(0o755)
    assert slurm.expand("n[1-2]", {"PATH": str(tmp_path)}) == ["from-scontrol-1", "from-scontrol-2"]


def test_expand_falls_back_when_scontrol_cannot_answer(tmp_path: Path) -> None:
    # Inside a container scontrol often has no slurm.conf: it fails, the parser answers.
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'fatal: Could not establish a configuration source' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert slurm.expand("n[1-2]", {"PATH": str(tmp_path)}) == ["n1", "n2"]


def test_a_plain_list_needs_no_process(tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\nexit 1\n")  # would fail the expansion if it were asked
    fake.chmod(0o755)
    assert slurm.expand("a,b c", {"PATH": str(tmp_path)}) == ["a", "b", "c"]
