"""Shared pieces of the sync tests: a job tree pointed at the loopback S3 server, waits, tree dumps."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtk.environment import Environment
from tests.helpers.jobtree import clean_env, make_tree
from tests.helpers.s3server import S3Server

JOB = "job-1"


@dataclass
class SyncJob:
    root: Path
    env: Environment
    environ: dict[str, str]
    bucket: str
    prefix: str  # where intermediate output lands, with a trailing slash

    @property
    def inter(self) -> Path:
        return self.root / "output" / "intermediate"


def make_job(
    base: Path,
    server: S3Server,
    *,
    bucket: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    checkpointconfig: Mapping[str, Any] | None = None,
    s3_output: bool = True,
) -> SyncJob:
    """A job tree whose ``sagemaker_s3_output`` points at ``server`` (a fresh bucket by default)."""
    bucket = bucket or server.new_bucket()
    hps = {"sagemaker_s3_output": f"s3://{bucket}/out"} if s3_output else {}
    root = make_tree(base, hyperparameters=hps, checkpointconfig=checkpointconfig)
    environ = {
        **clean_env(root),
        **server.env(),
        "TRAINING_JOB_NAME": JOB,
        "SMTK_SYNC_DEBOUNCE_MS": "50",
        **(extra_env or {}),
    }
    prefix = f"out/{JOB}/output/intermediate/"
    return SyncJob(root, Environment(root, environ=environ), environ, bucket, prefix)


def wait_until(predicate: Callable[[], bool], timeout: float = 120.0, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (generous: the box is shared and slow)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def local_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative path, with its content."""
    found: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def remote_files(server: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) :]: v for k, v in server.objects(bucket, prefix).items()}


def remote_digests(server: S3Server, bucket: str, prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` with the MD5 of its content (one listing, few GETs)."""
    client = server.client()
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            etag = item["ETag"].strip('"')
            if "-" in etag:  # multipart: the ETag is not the content's MD5, fetch it
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                etag = hashlib.md5(body).hexdigest()
            found[item["Key"][len(prefix) :]] = etag
    return found


def local_digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.md5(data).hexdigest() for rel, data in local_files(root).items()}


def object_exists(server: S3Server, bucket: str, key: str) -> bool:
    try:
        server.client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception:
        return False


def object_body(server: S3Server, bucket: str, key: str) -> bytes | None:
    try:
        body: bytes = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body
    except Exception:
        return None


class Records(logging.Handler):
    """Collects the records of one logger (independent of how ``smtk`` logging is configured)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextmanager
def captured(name: str = "smtk.sync") -> Iterator[Records]:
    logger = logging.getLogger(name)
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
