"""Outcome invariants of ``train`` over generated jobs (hypothesis), not hand-picked examples.

A generated job has secret-named hyperparameters and environment variables, a script that
prints generated lines (long ones, control characters, the secrets themselves, URLs with
credentials), then ends one of several ways (an exit status, an exception whose message
carries a secret, a signal), and sometimes a broken configuration file. Whatever the mix,
a real ``train`` run must:

- end (the subprocess timeout fails the test otherwise);
- exit with the status the ending implies (the code's status, 1 for an exception,
  128 + signal, 2 for a bad configuration);
- write ``output/failure`` exactly when the status is not 0, a reason on its first line
  (never a traceback, never "internal error"), and a ``failure.json`` that parses;
- let no secret value through: not on stdout or stderr, not in either failure file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.jobtree import clean_env, make_tree

TRAIN = str(Path(sys.executable).parent / "train")

SECRET_NAMES = [
    "db_password", "dbpassword", "hftoken", "API_KEY", "sessiontoken", "githubtoken", "mypasswd",
    "authorization", "client_secret", "aws_secret_access_key", "wandb_api_key", "db_pass",
]  # fmt: skip
PLAIN_NAMES = ["epochs", "lr", "max_tokens", "model_name", "batch_size", "tokenizer"]

secrets_text = st.text(
    alphabet="abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=14, max_size=40
)
noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=120)


@dataclass(frozen=True)
class Job:
    hp_secrets: dict[str, str]
    env_secrets: dict[str, str]
    plain: dict[str, str]
    lines: tuple[tuple[str, str, int, str], ...]  # (stream, before, which secret (-1: none), after)
    ending: tuple[str, int]  # ("exit", n) | ("raise", 0) | ("signal", n) | ("config", 0)
    long_line: int

    def secrets(self) -> list[str]:
        return [*self.hp_secrets.values(), *self.env_secrets.values()]


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    names = draw(st.lists(st.sampled_from(SECRET_NAMES), min_size=1, max_size=3, unique=True))
    values = draw(st.lists(secrets_text, min_size=len(names), max_size=len(names), unique=True))
    split = draw(st.integers(0, len(names)))
    hp_secrets = dict(zip(names[:split], values[:split], strict=True))
    env_secrets = {name.upper(): value for name, value in zip(names[split:], values[split:], strict=True)}
    plain = draw(st.dictionaries(st.sampled_from(PLAIN_NAMES), st.text(max_size=20), max_size=3))
    count = len(names)
    lines = draw(
        st.lists(
            st.tuples(st.sampled_from(["out", "err"]), noise, st.integers(-1, count - 1), noise), max_size=6
        )
    )
    ending = draw(
        st.one_of(
            st.tuples(st.just("exit"), st.sampled_from([0, 0, 1, 3, 42])),
            st.tuples(st.just("raise"), st.just(0)),
            st.tuples(st.just("signal"), st.sampled_from([9, 11, 6])),
            st.tuples(st.just("config"), st.integers(0, 3)),
        )
    )
    long_line = draw(st.sampled_from([0, 0, 70_000, 300_000]))
    return Job(hp_secrets, env_secrets, plain, tuple(lines), ending, long_line)


def _script(job: Job) -> str:
    secrets = job.secrets()
    body = ["import os, signal, sys", f"SECRETS = {secrets!r}"]
    for stream, before, which, after in job.lines:
        text = before + (secrets[which] if which >= 0 else "") + after
        target = "sys.stdout" if stream == "out" else "sys.stderr"
        body.append(f"print({text!r}, file={target}, flush=True)")
    if job.long_line:
        body.append(f"print('x' * {job.long_line} + SECRETS[0] + 'y' * 1000, flush=True)")
    body.append("print('https://user:' + SECRETS[-1] + '@example.com/simple', file=sys.stderr, flush=True)")
    kind, number = job.ending
    if kind == "exit":
        body.append(f"sys.exit({number})")
    elif kind == "raise":
        body.append("raise ValueError('bad input near ' + SECRETS[0] + ' in the batch')")
    elif kind == "signal":
        body.append(f"sys.stdout.flush(); os.kill(os.getpid(), {number})")
    return "\n".join(body) + "\n"


BROKEN_CONFIGS = [
    ("input/config/resourceconfig.json", '{"current_host": "algo-1", "hosts": "algo-1"}'),
    ("input/config/inputdataconfig.json", '{"train": {"TrainingInputMode": "Tape"}}'),
    ("input/config/hyperparameters.json", '{"a": 1, "a": 2}'),
    ("input/config/resourceconfig.json", "{not json"),
]


def expected_status(job: Job) -> int:
    if any("\x00" in value for value in job.plain.values()):
        return 2  # a NUL cannot be passed in argv or the environment: a configuration error
    kind, number = job.ending
    return {"exit": number, "raise": 1, "signal": 128 + number, "config": 2}[kind]


@pytest.mark.slow
@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=jobs())
def test_every_generated_job_ends_with_a_true_safe_outcome(
    tmp_path_factory: pytest.TempPathFactory, job: Job
) -> None:
    base = tmp_path_factory.mktemp("job")
    hyperparameters = {**job.plain, **job.hp_secrets}
    raw: dict[str, str] = {}
    if job.ending[0] == "config":
        path, content = BROKEN_CONFIGS[job.ending[1]]
        raw[path] = content
    root = make_tree(base, hyperparameters=hyperparameters, code={"train.py": _script(job)}, raw_files=raw)
    env = clean_env(root, SAGEMAKER_PROGRAM="train.py", **job.env_secrets)
    proc = subprocess.run([TRAIN], env=env, capture_output=True, timeout=180, check=False)
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    status = expected_status(job)
    assert proc.returncode == status, stderr[-3000:]
    failure = root / "output" / "failure"
    assert failure.exists() == (status != 0)
    assert (root / "output" / "success").exists() == (status == 0)
    written = [stdout, stderr]
    if status != 0:
        text = failure.read_text()
        first = text.splitlines()[0]
        assert first and not first.startswith("Traceback") and "internal error" not in text, text
        record = json.loads((root / "output" / "failure.json").read_text())
        assert record["exit_status"] == status
        written += [text, json.dumps(record)]
    for secret in job.secrets():
        for where, output in zip(("stdout", "stderr", "failure", "failure.json"), written, strict=False):
            assert secret not in output, f"{secret!r} leaked to {where}"
