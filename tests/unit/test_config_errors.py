"""Bad input corpus: every malformed config is a ConfigError naming file, key and what was found.

Each entry lays out a real tree (tests/helpers/jobtree.py) with one thing wrong and builds
an ``Environment`` from it, exactly as ``train`` and ``smtk env`` do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtk.config import MAX_CONFIG_BYTES
from smtk.environment import Environment
from smtk.errors import ConfigError
from tests.helpers.jobtree import ONE_HOST, make_tree

HP = "hyperparameters.json"
IDC = "inputdataconfig.json"
RC = "resourceconfig.json"
CONFIG = "input/config/"
FILE_CH = {"TrainingInputMode": "File"}
TWO = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}


def _raw(name: str, content: str | bytes) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        path = root / CONFIG / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return build


def _json(name: str, value: Any) -> Callable[[Path], None]:
    return _raw(name, json.dumps(value))


def _rc(**changes: Any) -> Callable[[Path], None]:
    value = dict(TWO)
    for key, change in changes.items():
        if change is _DROP:
            value.pop(key, None)
        else:
            value[key] = change
    return _json(RC, value)


_DROP = object()


def _directory(name: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        (root / CONFIG / name).mkdir(parents=True)

    return build


def _fifo(name: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        os.mkfifo(root / CONFIG / name)

    return build


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        (root / CONFIG / name).symlink_to(target)

    return build


def _loop(name: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        path = root / CONFIG / name
        path.symlink_to(path)  # ELOOP: unreadable even for root

    return build


def _huge(name: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        with open(root / CONFIG / name, "wb") as handle:
            handle.truncate(MAX_CONFIG_BYTES + 1)  # sparse: no real disk use

    return build


def _hp(**values: Any) -> Callable[[Path], None]:
    return _json(HP, values)


# (id, how to break the tree, file named, key named (None: the file as a whole), found text)
CORPUS: list[tuple[str, Callable[[Path], None], str, str | None, str]] = [
    # -- any file ------------------------------------------------------------------------
    ("hp-not-json", _raw(HP, "{'lr': 1}"), HP, None, "Expecting property name"),
    ("hp-truncated", _raw(HP, '{"lr": "0.1"'), HP, None, "Expecting ','"),
    ("hp-empty-file", _raw(HP, ""), HP, None, "Expecting value"),
    ("hp-array", _json(HP, ["lr", "0.1"]), HP, None, "a JSON array"),
    ("hp-string", _json(HP, "lr=0.1"), HP, None, "a JSON string"),
    ("hp-null", _raw(HP, "null"), HP, None, "a JSON null"),
    ("idc-number", _raw(IDC, "42"), IDC, None, "a JSON number"),
    ("hp-invalid-utf8", _raw(HP, b'{"name": "\xff\xfe"}'), HP, None, "invalid byte 0xff at offset 10"),
    ("hp-duplicate-key", _raw(HP, '{"lr": "0.1", "lr": "0.2"}'), HP, "lr", "the key repeated"),
    (
        "rc-duplicate-key",
        _raw(RC, '{"current_host": "algo-1", "hosts": ["algo-1"], "hosts": []}'),
        RC,
        "hosts",
        "the key repeated",
    ),
    ("hp-directory", _directory(HP), HP, None, "a directory"),
    ("rc-fifo", _fifo(RC), RC, None, "a FIFO"),
    ("idc-device", _symlink(IDC, "/dev/zero"), IDC, None, "a device"),
    ("rc-symlink-loop", _loop(RC), RC, None, "Too many levels of symbolic links"),
    (
        "rc-dangling-symlink",
        _symlink(RC, "/nonexistent/resourceconfig.json"),
        RC,
        None,
        "dangling symbolic link",
    ),
    ("hp-huge-file", _huge(HP), HP, None, f"{MAX_CONFIG_BYTES + 1} bytes"),
    ("hp-deep-nesting", _raw(HP, "[" * 100_000 + "]" * 100_000), HP, None, "deeper nesting"),
    (
        "rc-nul-in-host",
        _raw(RC, '{"current_host": "algo-1", "hosts": ["algo-1\\u0000x"]}'),
        RC,
        "hosts[0]",
        "NUL character",
    ),
    ("hp-lone-surrogate", _raw(HP, '{"name": "\\ud800"}'), HP, "name", "unpaired surrogate"),
    # -- hyperparameters.json --------------------------------------------------------------
    ("hp-encoded-nul", _hp(name=json.dumps("a\x00b")), HP, "name", "NUL character"),
    ("hp-encoded-surrogate", _raw(HP, json.dumps({"name": '"\\udc80"'})), HP, "name", "unpaired surrogate"),
    ("hp-equals-in-key", _hp(**{"a=b": "1"}), HP, "a=b", "'=' in the name"),
    ("hp-deep-value", _hp(layers="[" * 50_000 + "]" * 50_000), HP, "layers", "deeper nesting"),
    (
        "hp-log-level-word",
        _hp(sagemaker_container_log_level='"loud"'),
        HP,
        "sagemaker_container_log_level",
        '<string "loud">',
    ),
    (
        "hp-log-level-list",
        _hp(sagemaker_container_log_level="[20]"),
        HP,
        "sagemaker_container_log_level",
        "<array [20]>",
    ),
    ("hp-program-number", _hp(sagemaker_program="5"), HP, "sagemaker_program", "<number 5>"),
    (
        "hp-distribution-groups-string",
        _hp(sagemaker_distribution_instance_groups='"train"'),
        HP,
        "sagemaker_distribution_instance_groups",
        '<string "train">',
    ),
    (
        "hp-distribution-groups-nan",
        _hp(sagemaker_distribution_instance_groups="NaN"),
        HP,
        "sagemaker_distribution_instance_groups",
        "<number NaN>",
    ),
    ("hp-argv-format", _hp(smtk_argv_format='"yaml"'), HP, "smtk_argv_format", '<string "yaml">'),
    # -- inputdataconfig.json ------------------------------------------------------------
    ("idc-channel-dotdot", _json(IDC, {"..": FILE_CH}), IDC, "..", '<string "..">'),
    ("idc-channel-traversal", _json(IDC, {"../etc": FILE_CH}), IDC, "../etc", '<string "../etc">'),
    ("idc-channel-slash", _json(IDC, {"a/b": FILE_CH}), IDC, "a/b", '<string "a/b">'),
    ("idc-channel-newline", _json(IDC, {"train\n": FILE_CH}), IDC, "train\n", '<string "train\\n">'),
    ("idc-channel-empty", _json(IDC, {"": FILE_CH}), IDC, "", '<string "">'),
    ("idc-channel-huge-name", _json(IDC, {"c" * 100_000: FILE_CH}), IDC, "c" * 57 + "...", "..."),
    ("idc-channel-not-object", _json(IDC, {"train": "File"}), IDC, "train", '<string "File">'),
    (
        "idc-unknown-mode",
        _json(IDC, {"train": {"TrainingInputMode": "Stream"}}),
        IDC,
        "train.TrainingInputMode",
        '<string "Stream">',
    ),
    (
        "idc-mode-number",
        _json(IDC, {"train": {"TrainingInputMode": 1}}),
        IDC,
        "train.TrainingInputMode",
        "<number 1>",
    ),
    (
        "idc-unknown-distribution",
        _json(IDC, {"train": {"S3DistributionType": "Random"}}),
        IDC,
        "train.S3DistributionType",
        '<string "Random">',
    ),
    (
        "idc-unknown-wrapper",
        _json(IDC, {"train": {"RecordWrapperType": "TFRecord"}}),
        IDC,
        "train.RecordWrapperType",
        '<string "TFRecord">',
    ),
    (
        "idc-content-type-list",
        _json(IDC, {"train": {"ContentType": ["text/csv"]}}),
        IDC,
        "train.ContentType",
        '<array ["text/csv"]>',
    ),
    # -- resourceconfig.json -------------------------------------------------------------
    ("rc-current-host-not-in-hosts", _rc(current_host="algo-9"), RC, "current_host", '<string "algo-9">'),
    ("rc-current-host-missing", _rc(current_host=_DROP), RC, "current_host", "<nothing: the key is absent>"),
    (
        "rc-current-host-option",
        _rc(current_host="-oProxyCommand=x"),
        RC,
        "current_host",
        '<string "-oProxyCommand=x">',
    ),
    ("rc-host-option", _rc(hosts=["algo-1", "-oProxyCommand=touch /tmp/x"]), RC, "hosts", "-oProxyCommand"),
    ("rc-host-newline", _rc(hosts=["algo-1", "algo-2\n"]), RC, "hosts", '<string "algo-2\\n">'),
    ("rc-hosts-missing", _rc(hosts=_DROP), RC, "hosts", "<nothing: the key is absent>"),
    ("rc-hosts-empty", _rc(hosts=[]), RC, "hosts", "<array []>"),
    ("rc-hosts-string", _rc(hosts="algo-1,algo-2"), RC, "hosts", '<string "algo-1,algo-2">'),
    ("rc-hosts-nan", _raw(RC, '{"current_host": "algo-1", "hosts": NaN}'), RC, "hosts", "<number NaN>"),
    ("rc-hosts-number-items", _rc(hosts=[1, 2]), RC, "hosts", "<number 1>"),
    ("rc-hosts-repeated", _rc(hosts=["algo-1", "algo-1"]), RC, "hosts", "'algo-1' twice"),
    ("rc-huge-host", _rc(hosts=["algo-1", "h" * 1_000_000]), RC, "hosts", "hhh..."),
    ("rc-iface-option", _rc(network_interface_name="-x"), RC, "network_interface_name", '<string "-x">'),
    (
        "rc-iface-space",
        _rc(network_interface_name="eth0 lo"),
        RC,
        "network_interface_name",
        '<string "eth0 lo">',
    ),
    ("rc-instance-type-number", _rc(current_instance_type=5), RC, "current_instance_type", "<number 5>"),
    ("rc-group-name-empty", _rc(current_group_name=""), RC, "current_group_name", '<string "">'),
    ("rc-topology-object", _rc(topology={"a": 1}), RC, "topology", '<object {"a": 1}>'),
    ("rc-groups-object", _rc(instance_groups={"g": ["algo-1"]}), RC, "instance_groups", "<object"),
    ("rc-group-not-object", _rc(instance_groups=["g"]), RC, "instance_groups[0]", '<string "g">'),
    (
        "rc-group-name-missing",
        _rc(instance_groups=[{"hosts": ["algo-1"]}]),
        RC,
        "instance_groups[0].instance_group_name",
        "<nothing: the key is absent>",
    ),
    (
        "rc-group-hosts-missing",
        _rc(instance_groups=[{"instance_group_name": "g"}]),
        RC,
        "instance_groups[0].hosts",
        "<nothing: the key is absent>",
    ),
    (
        "rc-group-stranger",
        _rc(instance_groups=[{"instance_group_name": "g", "hosts": ["algo-7"]}]),
        RC,
        "instance_groups[0].hosts",
        '<array ["algo-7"]>',
    ),
    (
        "rc-group-repeated",
        _rc(
            instance_groups=[
                {"instance_group_name": "g", "hosts": ["algo-1"]},
                {"instance_group_name": "g", "hosts": ["algo-2"]},
            ]
        ),
        RC,
        "instance_groups[1].instance_group_name",
        "'g' twice",
    ),
    (
        "rc-current-group-unknown",
        _rc(current_group_name="gpu", instance_groups=[{"instance_group_name": "cpu", "hosts": ["algo-1"]}]),
        RC,
        "current_group_name",
        '<string "gpu">',
    ),
]


def _tree(tmp_path: Path, build: Callable[[Path], None], source: str) -> Path:
    """A valid tree whose file ``source`` is then replaced by what ``build`` makes."""
    root = make_tree(tmp_path, hyperparameters={}, inputdataconfig={}, resourceconfig=ONE_HOST)
    (root / CONFIG / source).unlink()
    build(root)
    return root


@pytest.mark.parametrize(("case", "build", "source", "key", "found"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_is_a_config_error_naming_file_key_and_found(
    tmp_path: Path, case: str, build: Callable[[Path], None], source: str, key: str | None, found: str
) -> None:
    root = _tree(tmp_path, build, source)
    with pytest.raises(ConfigError) as caught:
        Environment(root=root, environ={"PATH": "/usr/bin:/bin"})
    error = caught.value
    message = str(error)
    assert error.source == source
    assert error.key == key
    assert message.startswith(
        f"{source}: key {key!r}: expected " if key is not None else f"{source}: expected "
    )
    assert found in message
    assert "\n" not in message
    assert len(message) < 600, "a hostile value must not blow up the message"
    assert error.exit_status == 2


def test_corpus_is_large_and_distinct() -> None:
    assert len(CORPUS) >= 25
    assert len({case[0] for case in CORPUS}) == len(CORPUS)


def test_setting_variable_is_named(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    with pytest.raises(
        ConfigError, match=r"^environment: key 'SMTK_ARGV_FORMAT': expected 'compat' or 'json'"
    ):
        Environment(root=root, environ={"SMTK_ARGV_FORMAT": "yaml"})


def test_unreadable_file(tmp_path: Path) -> None:
    """Permission denied. Root reads everything, so when we are root a forked child drops to nobody."""
    root = make_tree(tmp_path)
    hp = root / CONFIG / HP
    hp.write_text("{}")
    os.chmod(hp, 0o000)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        message = "no error"
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            Environment(root=root, environ={})
        except ConfigError as exc:
            message = str(exc)
        except BaseException as exc:
            message = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        message = handle.read().decode()
    os.waitpid(pid, 0)
    assert message == f"hyperparameters.json: expected a readable file, found <Permission denied: {hp}>"
