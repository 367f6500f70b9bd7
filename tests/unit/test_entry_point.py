"""Entry point resolution: kinds, validation, error messages (smtk.entry_point)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from smtk.entry_point import EntryPoint, ensure_executable, resolve
from smtk.environment import Environment
from smtk.errors import EntryPointError
from smtk.launch.plain import entry_argv
from tests.helpers.jobtree import make_tree


def env_for(
    tmp_path: Path,
    code: dict[str, str | bytes],
    program: str | None = None,
    *,
    hp_program: str | None = None,
    **environ: str,
) -> Environment:
    hps = {"sagemaker_program": hp_program} if hp_program is not None else {}
    root = make_tree(tmp_path, hyperparameters=hps, code=code)
    if program is not None:
        environ["SAGEMAKER_PROGRAM"] = program
    return Environment(root=root, environ=environ)


# -- kinds -------------------------------------------------------------------------------


def test_python_script(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"train.py": "print(1)\n"}, "train.py")
    entry = resolve(env)
    assert entry == EntryPoint("python", "train.py", env.paths.code_dir)
    assert entry_argv(entry, "py") == ["py", "train.py"]


def test_python_script_in_subdirectory(tmp_path: Path) -> None:
    entry = resolve(env_for(tmp_path, {"src/train.py": ""}, "src/train.py"))
    assert (entry.kind, entry.name) == ("python", "src/train.py")


def test_shell_script_with_shebang(tmp_path: Path) -> None:
    entry = resolve(env_for(tmp_path, {"run.sh": "#!/bin/bash\necho hi\n"}, "run.sh"))
    assert (entry.kind, entry.has_shebang) == ("shell", True)
    assert entry_argv(entry) == ["./run.sh"]


def test_shell_script_without_shebang_runs_with_sh(tmp_path: Path) -> None:
    entry = resolve(env_for(tmp_path, {"run.sh": "echo hi\n"}, "run.sh"))
    assert (entry.kind, entry.has_shebang) == ("shell", False)
    assert entry_argv(entry) == ["/bin/sh", "run.sh"]


def test_command_without_extension_is_shell(tmp_path: Path) -> None:
    entry = resolve(env_for(tmp_path, {"train": "#!/usr/bin/env python3\n"}, "train"))
    assert (entry.kind, entry.has_shebang) == ("shell", True)


def test_elf_binary_is_run_directly(tmp_path: Path) -> None:
    true = shutil.which("true")
    assert true is not None
    entry = resolve(env_for(tmp_path, {"run": Path(true).read_bytes()}, "run"))
    assert (entry.kind, entry.has_shebang) == ("shell", True)


def test_setup_py_makes_a_package(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"setup.py": "", "train.py": ""}, "train.py")
    entry = resolve(env)
    assert (entry.kind, entry.module) == ("package", "train")
    assert entry_argv(entry, "py") == ["py", "-m", "train"]


def test_package_module_in_a_subdirectory_is_dotted(tmp_path: Path) -> None:
    entry = resolve(
        env_for(tmp_path, {"setup.py": "", "pkg/__init__.py": "", "pkg/train.py": ""}, "pkg/train.py")
    )
    assert (entry.kind, entry.module) == ("package", "pkg.train")


def test_package_module_given_without_py(tmp_path: Path) -> None:
    entry = resolve(
        env_for(tmp_path, {"setup.py": "", "pkg/__init__.py": "", "pkg/train.py": ""}, "pkg.train")
    )
    assert (entry.kind, entry.module) == ("package", "pkg.train")


def test_package_module_not_in_code_dir_is_left_to_the_install(tmp_path: Path) -> None:
    # a src/ layout: the module only exists once installed
    entry = resolve(env_for(tmp_path, {"setup.py": "", "src/mypkg/train.py": ""}, "mypkg.train"))
    assert (entry.kind, entry.module) == ("package", "mypkg.train")


@pytest.mark.parametrize("table", ["[project]\nname = 'x'\n", "[build-system]\nrequires = ['setuptools']\n"])
def test_pyproject_with_project_or_build_system_makes_a_package(tmp_path: Path, table: str) -> None:
    entry = resolve(env_for(tmp_path, {"pyproject.toml": table, "train.py": ""}, "train.py"))
    assert entry.kind == "package"


def test_pyproject_with_only_tool_settings_is_not_a_package(tmp_path: Path) -> None:
    code: dict[str, str | bytes] = {"pyproject.toml": "[tool.ruff]\nline-length = 100\n", "train.py": ""}
    assert resolve(env_for(tmp_path, code, "train.py")).kind == "python"


def test_sh_wins_over_setup_py(tmp_path: Path) -> None:
    # the reference checks .sh first
    entry = resolve(env_for(tmp_path, {"setup.py": "", "run.sh": "echo\n"}, "run.sh"))
    assert entry.kind == "shell"


def test_training_module_function(tmp_path: Path) -> None:
    env = env_for(tmp_path, {}, "train.py", SAGEMAKER_TRAINING_MODULE="my_fw.training:main")
    entry = resolve(env)
    assert (entry.kind, entry.module, entry.function) == ("function", "my_fw.training", "main")
    assert entry_argv(entry, "py") == ["py", "-m", "smtk.launch.call", "my_fw.training:main"]


@pytest.mark.parametrize(
    "value", ["my_fw.training", "my_fw..t:main", "my_fw.t:main()", "1fw:main", "fw:", ":main", "fw:main\n"]
)
def test_training_module_must_be_module_colon_function(tmp_path: Path, value: str) -> None:
    with pytest.raises(EntryPointError, match="SAGEMAKER_TRAINING_MODULE") as info:
        resolve(env_for(tmp_path, {}, SAGEMAKER_TRAINING_MODULE=value))
    assert repr(value) in str(info.value)
    assert info.value.exit_status == 2


def test_sagemaker_program_wins_over_hyperparameter(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"a.py": "", "b.py": ""}, "a.py", hp_program="b.py")
    assert resolve(env).name == "a.py"


def test_hyperparameter_program(tmp_path: Path) -> None:
    assert resolve(env_for(tmp_path, {"b.py": ""}, hp_program="b.py")).name == "b.py"


# -- errors ------------------------------------------------------------------------------


def test_no_program_says_how_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve(env_for(tmp_path, {"train.py": ""}))
    text = str(info.value)
    assert "SAGEMAKER_PROGRAM" in text and "sagemaker_program" in text
    assert "train.py" in text  # the code dir listing


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../outside.py", "'..'"),
        ("sub/../train.py", "'..'"),
        ("./train.py", "'.'"),
        ("/etc/passwd", "absolute"),
        ("-c", "'-'"),
        ("--version", "'-'"),
        ("train.py;id", "';'"),
        ("my train.py", "' '"),
        ("train.py\n", "'\\n'"),
        ("sub//train.py", "plain relative path"),
    ],
)
def test_invalid_names_are_rejected_with_a_listing(tmp_path: Path, name: str, problem: str) -> None:
    (tmp_path / "outside.py").write_text("")
    with pytest.raises(EntryPointError) as info:
        resolve(env_for(tmp_path, {"train.py": "", "sub/x": ""}, name))
    text = str(info.value)
    assert text.startswith(f"entry point {name!r}: ")
    assert problem in text
    assert "contains: sub/, train.py" in text


def test_missing_file_lists_the_code_dir_and_suggests_the_only_script(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve(env_for(tmp_path, {"train_v2.py": "", "data.csv": "", "lib/util.py": ""}, "train.py"))
    text = str(info.value)
    assert "no such file" in text
    assert "contains: data.csv, lib/, train_v2.py" in text
    assert "did you mean 'train_v2.py'?" in text


def test_no_suggestion_when_several_scripts(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve(env_for(tmp_path, {"a.py": "", "b.sh": ""}, "train.py"))
    assert "did you mean" not in str(info.value)


def test_listing_is_truncated(tmp_path: Path) -> None:
    code: dict[str, str | bytes] = {f"f{i:02d}.txt": "" for i in range(25)}
    with pytest.raises(EntryPointError) as info:
        resolve(env_for(tmp_path, code, "train.py"))
    text = str(info.value)
    assert "f19.txt, ... (5 more)" in text and "f20.txt" not in text


def test_empty_code_dir_says_so(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError, match="the directory is empty"):
        resolve(env_for(tmp_path, {}, "train.py"))


def test_symlink_leaving_the_code_dir_is_rejected(tmp_path: Path) -> None:
    env = env_for(tmp_path, {}, "train.py")
    secret = tmp_path / "secret.py"
    secret.write_text("")
    os.symlink(secret, os.path.join(env.paths.code_dir, "train.py"))
    with pytest.raises(EntryPointError, match=r"resolves to .*secret\.py, outside the code dir"):
        resolve(env)


def test_symlink_inside_the_code_dir_is_fine(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"real/train.py": ""}, "train.py")
    os.symlink("real/train.py", os.path.join(env.paths.code_dir, "train.py"))
    assert resolve(env).kind == "python"


def test_dangling_symlink(tmp_path: Path) -> None:
    env = env_for(tmp_path, {}, "train.py")
    os.symlink("gone.py", os.path.join(env.paths.code_dir, "train.py"))
    with pytest.raises(EntryPointError, match="dangling"):
        resolve(env)


def test_directory_is_not_an_entry_point(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError, match="not a regular file"):
        resolve(env_for(tmp_path, {"train.py/x": ""}, "train.py"))


def test_package_name_that_is_not_a_module(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError, match="is not a module name"):
        resolve(env_for(tmp_path, {"setup.py": "", "my-train.py": ""}, "my-train.py"))


# -- ensure_executable --------------------------------------------------------------------


def test_ensure_executable_adds_only_the_owner_bit(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"run": "#!/bin/sh\necho hi\n"}, "run")
    path = Path(env.paths.code_dir, "run")
    path.chmod(0o640)
    entry = resolve(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # resolve changes nothing
    ensure_executable(entry)
    assert stat.S_IMODE(path.stat().st_mode) == 0o740


def test_ensure_executable_leaves_sh_scripts_without_shebang(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"run.sh": "echo hi\n"}, "run.sh")
    path = Path(env.paths.code_dir, "run.sh")
    path.chmod(0o644)
    ensure_executable(resolve(env))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("asked", "meant"), [("trian.py", "train.py"), ("Train.py", "train.py"), ("tarin.py", "train.py")]
)
def test_a_typo_gets_the_nearest_script(tmp_path: Path, asked: str, meant: str) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve(env_for(tmp_path, {"train.py": "", "prepare.py": "", "eval.py": ""}, asked))
    assert f"did you mean {meant!r}?" in str(info.value)
