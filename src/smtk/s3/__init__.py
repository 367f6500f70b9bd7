"""S3 access shared by code fetch, output sync, checkpoints and the Pipe feeder.

boto3 is imported only when a client is actually built, so nothing on the ``train``
path pays for it unless the job touches S3. The endpoint honours ``S3_ENDPOINT_URL``
(as the reference does) and the region ``AWS_REGION``, then ``SAGEMAKER_REGION``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from smtk.errors import ConfigError


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)


def parse_s3_uri(uri: str, source: str = "S3 URI", key: str | None = None) -> S3Uri:
    """``s3://bucket/prefix`` -> :class:`S3Uri`; a clear :class:`ConfigError` otherwise."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(source, key, "an s3://bucket/key URI", uri)
    return S3Uri(parsed.netloc, parsed.path.lstrip("/"))


def client_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``boto3.client("s3", ...)`` from the environment."""
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    region = env.get("AWS_REGION") or env.get("SAGEMAKER_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        settings["region_name"] = region
    endpoint = env.get("S3_ENDPOINT_URL")
    if endpoint:
        settings["endpoint_url"] = endpoint
    return settings


def make_client(
    environ: Mapping[str, str] | None = None, *, max_pool_connections: int = 10, retries: int = 3
) -> Any:
    """A boto3 S3 client configured from the environment (imports boto3 here, lazily)."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": retries, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client("s3", config=cfg, **client_settings(environ))
