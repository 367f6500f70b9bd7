"""Build real ``/opt/ml`` trees under a temporary directory."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ONE_HOST = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}


def make_tree(
    base: Path,
    *,
    hyperparameters: Mapping[str, Any] | None = None,
    inputdataconfig: Mapping[str, Any] | None = None,
    resourceconfig: Mapping[str, Any] | None = ONE_HOST,
    checkpointconfig: Mapping[str, Any] | None = None,
    code: Mapping[str, str | bytes] | None = None,
    raw_files: Mapping[str, str | bytes] | None = None,
    encode: bool = True,
) -> Path:
    """Lay out ``base/opt/ml`` and return it.

    ``hyperparameters`` values are JSON-encoded the way the SageMaker SDK does unless
    ``encode`` is false (then they must already be strings, as raw API callers send).
    ``raw_files`` writes exact bytes to paths relative to the root (for bad input).
    """
    root = base / "opt" / "ml"
    for sub in ("input/config", "input/data", "code", "model", "output"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "input" / "config"
    if hyperparameters is not None:
        values = {k: json.dumps(v) for k, v in hyperparameters.items()} if encode else dict(hyperparameters)
        (config / "hyperparameters.json").write_text(json.dumps(values))
    if inputdataconfig is not None:
        (config / "inputdataconfig.json").write_text(json.dumps(inputdataconfig))
    if resourceconfig is not None:
        (config / "resourceconfig.json").write_text(json.dumps(resourceconfig))
    if checkpointconfig is not None:
        (config / "checkpointconfig.json").write_text(json.dumps(checkpointconfig))
    for rel, content in (code or {}).items():
        path = root / "code" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        if rel.endswith(".sh"):
            os.chmod(path, 0o755)
    for rel, content in (raw_files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def clean_env(root: Path | None = None, **extra: str) -> dict[str, str]:
    """A minimal, deterministic environment for running ``train``/``smtk`` as subprocesses."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if root is not None:
        env["SAGEMAKER_BASE_DIR"] = str(root)
    env.update(extra)
    return env
