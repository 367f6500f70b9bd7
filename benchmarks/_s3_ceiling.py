"""The ceiling of benchmarks/sync.py: a standalone script moving the same files by hand.

    python benchmarks/_s3_ceiling.py upload|download --client crt|classic
                                     --endpoint URL --bucket B --prefix P/ --dir D [--single-put]

What a competent user would write without smtk: every file under ``--dir`` uploaded to
``<prefix><relative path>`` (or every object under ``--prefix`` downloaded to
``<dir>/<rest of key>``), all submitted at once to one transfer manager, then waited for.

- ``crt``: AWS's CRT S3 client, built through ``s3transfer.crt`` (``create_s3_crt_client``,
  ``BotocoreCRTRequestSerializer`` with the endpoint and path-style addressing,
  ``CRTTransferManager``). boto3's own CRT route ignores ``endpoint_url``. The manager is
  shut down before the clock stops: a CRT download's file is renamed into place only in
  its done callback, after ``future.result()`` has returned. ``--single-put`` uploads
  every file with one PUT (``rclone serve s3`` answers CreateMultipartUpload with a root
  element CRT rejects: ``AWS_ERROR_S3_MISSING_UPLOAD_ID``).
- ``classic``: boto3's ``s3transfer`` TransferManager with ``--threads`` threads (16; and as
  many pooled connections) and 16 MiB parts. Downloads pass each object's size from
  the listing, as the AWS CLI does, so no HeadObject precedes each GET.

Modules are imported before the clock starts; building the client, listing (downloads)
and every transfer are inside it. Prints one JSON line: client, start and end
(``time.monotonic()``, comparable with the caller's on Linux), files, bytes and error
(the first failure, ``null`` if none). Credentials and region come from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1024 * 1024


def _files(directory: str) -> list[tuple[str, str]]:
    """(path, relative path with '/') of every regular file under ``directory``, sorted."""
    found = []
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            found.append((path, os.path.relpath(path, directory).replace(os.sep, "/")))
    return sorted(found)


def _list(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", []))
    return [(key, size) for key, size in objects if not key.endswith("/")]


def _listing_client(args: argparse.Namespace) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name=args.region,
        config=Config(max_pool_connections=args.threads, s3={"addressing_style": "path"}),
    )


def _destination(directory: str, prefix: str, key: str) -> str:
    path = os.path.join(directory, *key[len(prefix) :].split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _first_error(futures: list[Any]) -> str | None:
    error = None
    for future in futures:
        try:
            future.result()
        except Exception as exc:  # reported; the caller's verification counts it
            error = error or f"{type(exc).__name__}: {exc}"
    return error


def run_crt(args: argparse.Namespace, files: list[tuple[str, str]]) -> tuple[int, int, str | None]:
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    session = botocore.session.Session()
    credentials = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
    crt_client = create_s3_crt_client(
        args.region, crt_credentials_provider=credentials, use_ssl=args.endpoint.startswith("https:")
    )
    serializer = BotocoreCRTRequestSerializer(
        session,
        {
            "endpoint_url": args.endpoint,
            "region_name": args.region,
            "config": Config(s3={"addressing_style": "path"}),
        },
    )
    # Part size left to CRT; with --single-put no upload is large enough for multipart.
    threshold = 5 * 1024 * MIB if args.single_put else 8 * MIB
    config = TransferConfig(multipart_threshold=threshold)
    futures = []
    total = 0
    with CRTTransferManager(crt_client, serializer, config=config) as manager:
        if args.direction == "upload":
            for path, rel in files:
                total += os.path.getsize(path)
                futures.append(manager.upload(path, args.bucket, args.prefix + rel))
        else:
            for key, size in _list(_listing_client(args), args.bucket, args.prefix):
                total += size
                futures.append(manager.download(args.bucket, key, _destination(args.dir, args.prefix, key)))
        error = _first_error(futures)
    return len(futures), total, error


def run_classic(args: argparse.Namespace, files: list[tuple[str, str]]) -> tuple[int, int, str | None]:
    from s3transfer.manager import TransferManager
    from s3transfer.subscribers import BaseSubscriber

    class ProvideSize(BaseSubscriber):  # type: ignore[misc]
        """The object's size from the listing, given when queued (the AWS CLI's way): no HeadObject."""

        def __init__(self, size: int) -> None:
            self.size = size

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(self.size)

    client = _listing_client(args)
    config = TransferConfig(
        max_concurrency=args.threads,
        multipart_threshold=16 * MIB,
        multipart_chunksize=16 * MIB,
        use_threads=True,
    )
    futures = []
    total = 0
    with TransferManager(client, config) as manager:
        if args.direction == "upload":
            for path, rel in files:
                total += os.path.getsize(path)
                futures.append(manager.upload(path, args.bucket, args.prefix + rel))
        else:
            for key, size in _list(client, args.bucket, args.prefix):
                total += size
                destination = _destination(args.dir, args.prefix, key)
                futures.append(
                    manager.download(args.bucket, key, destination, subscribers=[ProvideSize(size)])
                )
        error = _first_error(futures)
    return len(futures), total, error


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("direction", choices=("upload", "download"))
    parser.add_argument("--client", choices=("crt", "classic"), required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True, help="key prefix, ending with '/'")
    parser.add_argument(
        "--dir", required=True, help="files to upload, or an empty directory to download into"
    )
    parser.add_argument("--threads", type=int, default=16, help="classic: concurrent transfers")
    parser.add_argument("--single-put", action="store_true", help="crt: never use multipart upload")
    args = parser.parse_args()

    files = _files(args.dir) if args.direction == "upload" else []
    runner = run_crt if args.client == "crt" else run_classic
    start = time.monotonic()
    try:
        count, total, error = runner(args, files)
    except Exception as exc:  # reported; the caller counts what is missing
        count, total, error = 0, 0, f"{type(exc).__name__}: {exc}"
    end = time.monotonic()
    print(
        json.dumps(
            {
                "client": args.client,
                "start": start,
                "end": end,
                "files": count,
                "bytes": total,
                "error": error,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
