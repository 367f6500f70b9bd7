"""The ``sagemaker_training`` compatibility API (compat/), against the reference toolkit as oracle.

The compat package is imported from ``compat/src`` (it is a separate distribution; the
test venv does not install it). The oracle is the reference in ``.venv-ref``, asked in
one subprocess per test for the same table of inputs; tests that need it skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.jobtree import make_tree

REPO = Path(__file__).resolve().parents[2]
COMPAT_SRC = REPO / "compat" / "src"
REFERENCE_PYTHON = Path(os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python")))
needs_reference = pytest.mark.skipif(
    not REFERENCE_PYTHON.exists(), reason=f"reference toolkit not installed ({REFERENCE_PYTHON} missing)"
)


@pytest.fixture(autouse=True)
def compat_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(COMPAT_SRC))
    yield
    for name in [m for m in sys.modules if m == "sagemaker_training" or m.startswith("sagemaker_training.")]:
        del sys.modules[name]


def reference(code: str, payload: Any = None) -> Any:
    """Run ``code`` in the reference's interpreter; it reads ``payload`` as ``data`` and prints JSON."""
    script = "import json, sys\ndata = json.loads(sys.stdin.read())\n" + textwrap.dedent(code)
    out = subprocess.run(
        [str(REFERENCE_PYTHON), "-c", script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


MAPPINGS: list[dict[str, Any]] = [
    {},
    {"epochs": 10, "lr": 0.1, "a": True, "layers": [64, 32], "opts": {"x": 1, "b": "y"}, "none": None},
    {"name": "with space", "b": False, "nested": {"k": [1, 2]}, "empty": "", "z": 1.5e-7},
    {"unicode": "ünï", "quote": 'say "hi"', "int_text": "64", "k": -1},
]


@needs_reference
def test_mapping_renders_as_the_reference() -> None:
    from sagemaker_training import mapping

    theirs = reference(
        """
        from sagemaker_training import mapping
        print(json.dumps([[mapping.to_cmd_args(m), mapping.to_env_vars(m),
                           list(mapping.split_by_criteria(m, keys=["a", "lr"], prefix="e"))] for m in data]))
        """,
        MAPPINGS,
    )
    ours = [
        [mapping.to_cmd_args(m), mapping.to_env_vars(m), list(mapping.split_by_criteria(m, ["a", "lr"], "e"))]
        for m in MAPPINGS
    ]
    assert json.loads(json.dumps(ours)) == theirs


ERRORS = [
    ("ExecuteUserScriptError", ["python train.py", 1, "ValueError: bad", None]),
    ("ExecuteUserScriptError", ["python train.py", 137, "", "OOM?"]),
    ("InstallModuleError", [["python", "-m", "pip"], 42, None, None]),
    ("InstallRequirementsError", ["pip install -r requirements.txt", "1", "boom", "extra"]),
]


@needs_reference
def test_error_messages_are_the_references() -> None:
    from sagemaker_training import errors

    theirs = reference(
        """
        from sagemaker_training import errors
        out = [str(getattr(errors, name)(*args)) for name, args in data]
        out += [str(errors.ChannelDoesNotExistError("train")), errors.UnsupportedFormatError("a/b").message]
        out += [issubclass(errors.ExecuteUserScriptError, errors.ClientError)]
        print(json.dumps(out))
        """,
        ERRORS,
    )
    ours: list[Any] = [str(getattr(errors, name)(*args)) for name, args in ERRORS]
    ours += [str(errors.ChannelDoesNotExistError("train")), errors.UnsupportedFormatError("a/b").message]
    ours += [issubclass(errors.ExecuteUserScriptError, errors.ClientError)]
    assert ours == theirs


@pytest.mark.parametrize(
    ("return_code", "status"), [(1, 1), (3, 3), ("7", 7), (-15, 143), (None, 1), ("x", 1), (300, 1)]
)
def test_process_errors_carry_the_jobs_exit_status(return_code: Any, status: int) -> None:
    from sagemaker_training import errors

    assert errors.ExecuteUserScriptError("cmd", return_code).exit_status == status
    assert errors.ClientError("x").exit_status == 1


@needs_reference
def test_encoders_round_trip_with_the_reference() -> None:
    import numpy as np

    from sagemaker_training import content_types, encoders

    arrays = [[1, 2, 3], [[1.5, 2.0], [3.0, 4.25]], [[1, 2], [3, 4]]]
    theirs = reference(
        """
        import base64
        import numpy as np
        from sagemaker_training import encoders
        out = []
        for a in data:
            arr = np.array(a)
            out.append([encoders.array_to_json(arr), encoders.array_to_csv(arr),
                        base64.b64encode(encoders.array_to_npy(arr)).decode()])
        print(json.dumps(out))
        """,
        arrays,
    )
    import base64

    for array, (as_json, as_csv, as_npy) in zip(arrays, theirs, strict=True):
        value = np.array(array)
        assert encoders.array_to_json(value) == as_json
        assert encoders.array_to_csv(value) == as_csv
        assert encoders.array_to_npy(value) == base64.b64decode(as_npy)
        np.testing.assert_array_equal(encoders.decode(as_json, content_types.JSON), value)
        np.testing.assert_array_equal(encoders.decode(base64.b64decode(as_npy), content_types.NPY), value)
        assert (
            encoders.decode(as_csv, content_types.CSV).astype(value.dtype).tolist()
            == np.squeeze(value).tolist()
        )


def test_npy_with_objects_is_refused() -> None:
    import numpy as np

    from sagemaker_training import encoders, errors

    with pytest.raises(errors.ClientError, match="npy"):
        encoders.npy_to_numpy(encoders.array_to_npy(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(errors.UnsupportedFormatError):
        encoders.encode([1], "image/png")


def test_matching_args() -> None:
    from sagemaker_training import functions

    def train(channel_input_dirs: Any, hyperparameters: Any, model_dir: str = "") -> None: ...

    def anything(**kwargs: Any) -> None: ...

    env = {"channel_input_dirs": {}, "hyperparameters": {"a": 1}, "hosts": ["algo-1"]}
    assert functions.matching_args(train, env) == {"channel_input_dirs": {}, "hyperparameters": {"a": 1}}
    assert functions.matching_args(anything, env) == env


def test_environment_is_smtks_and_refuses_values_it_would_ignore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smtk
    from sagemaker_training import environment, errors

    hps = {"epochs": 3, "sagemaker_program": "train.py", "sagemaker_s3_output": "s3://b/p"}
    root = make_tree(tmp_path, hyperparameters=hps)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(root))
    env = environment.Environment(hyperparameters=environment.read_hyperparameters())
    assert env.sagemaker_s3_output() == "s3://b/p"
    assert isinstance(env, smtk.Environment)
    assert env.hyperparameters == {"epochs": 3} and env.user_entry_point == "train.py"
    assert environment.code_dir == str(root / "code") and environment.model_dir == str(root / "model")
    assert environment.channel_path("train") == str(root / "input" / "data" / "train")
    with pytest.raises(errors.ClientError, match=r"hyperparameters=.*hyperparameters\.json"):
        environment.Environment(hyperparameters={"epochs": 4})
    with pytest.raises(AttributeError):
        _ = environment.no_such_path


def test_runner_get_takes_the_jobs_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sagemaker_training import errors, runner

    root = make_tree(tmp_path, hyperparameters={"b": 1, "sagemaker_program": "train.py"})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(root))
    got = runner.get(runner.TorchDistributedRunnerType)
    assert (got.user_entry_point, got.args, got.runner_type) == (
        "train.py",
        ["-b", "1"],
        runner.RunnerType.TorchDistributed,
    )
    assert got.env_vars["SM_HP_B"] == "1"
    assert runner.get(got) is got
    (root / "input" / "config" / "hyperparameters.json").write_text("{}")
    with pytest.raises(errors.ClientError, match="no entry point"):
        runner.get(runner.ProcessRunnerType)


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = (
        "import sys; import sagemaker_training.entry_point, sagemaker_training.encoders, "
        "sagemaker_training.recordio, sagemaker_training.modules\n"
        "heavy = {'numpy', 'torch', 'boto3', 'google.protobuf', 'scipy', 'tensorflow'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(COMPAT_SRC)},
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("status", "expected"), [(7, 7), (255, 255), (0, 1), (256, 1), ("7", 1), (None, 1)])
def test_launch_call_exits_with_an_exceptions_exit_status(tmp_path: Path, status: Any, expected: int) -> None:
    (tmp_path / "failing_mod.py").write_text(
        "class Failed(Exception):\n"
        f"    exit_status = {status!r}\n"
        "def main():\n"
        "    raise Failed('the entry point failed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "smtk.launch.call", "failing_mod:main"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert result.returncode == expected
    assert "Failed: the entry point failed" in result.stderr


@needs_reference
def test_recordio_protobuf_bytes_are_the_references() -> None:
    pytest.importorskip("google.protobuf")
    import base64
    import io

    import numpy as np

    from sagemaker_training import encoders, recordio

    rows = [[[1.5, 2.0, 3.0], [4.0, 5.0, 6.25]], [[1, 2], [3, 4], [5, 6]]]
    theirs = reference(
        """
        import base64
        import numpy as np
        from sagemaker_training import encoders
        out = [base64.b64encode(encoders.array_to_recordio_protobuf(np.array(r, dtype=np.float32),
                                                                     labels=np.arange(len(r)))).decode()
               for r in data]
        print(json.dumps(out))
        """,
        rows,
    )
    for array, expected in zip(rows, theirs, strict=True):
        data = encoders.array_to_recordio_protobuf(
            np.array(array, dtype=np.float32), labels=np.arange(len(array))
        )
        assert data == base64.b64decode(expected)
        assert len(list(recordio._read_recordio(io.BytesIO(data)))) == len(array)
    sink = io.BytesIO()
    recordio._write_recordio(sink, b"abc")
    assert list(recordio._read_recordio(io.BytesIO(sink.getvalue()))) == [b"abc"]
