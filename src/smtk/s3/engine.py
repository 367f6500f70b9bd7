"""Moving files to and from S3: AWS's CRT client where it works, botocore's classic manager otherwise.

Every transfer smtk makes (output sync, checkpoint restore, code download, ``smtk
local``'s S3 channels) goes through one :class:`Engine`, built on maintained clients:

- **CRT** (``awscrt``, through ``s3transfer.crt``, the way boto3 and the AWS CLI use it
  for high throughput): requests are signed and sent by native code on a few event-loop
  threads, uploads carry a CRC32 trailer instead of a SHA-256 of the payload, large
  objects move in parallel parts both ways, and many small objects are in flight at
  once without a Python thread each. Used when ``SMTK_S3_CLIENT`` is ``auto`` (default)
  or ``crt``, unless it cannot apply: ``awscrt`` is not installed, a proxy is configured
  for the endpoint (the CRT client has no proxy settings of boto3's kind), or there are
  no credentials (botocore then reports that clearly).
- **classic** (boto3's ``put_object`` for files under the multipart threshold,
  ``s3transfer``'s ``TransferManager`` for the rest and for downloads): what the
  reference toolkit uses; ``SMTK_S3_CLIENT=classic`` forces it.

Both are driven through the same public ``s3transfer`` interface (``upload``,
``download``, subscribers for progress and completion), built from the same
environment (``S3_ENDPOINT_URL``, the region, the credentials chain, ``AWS_CA_BUNDLE``),
so everything above the engine is the same for both.

An S3-compatible server may answer in a way the CRT client refuses while botocore
accepts it (``rclone serve s3`` names its CreateMultipartUpload answer differently):
:meth:`Engine.fall_back` then moves that kind of transfer (uploads or downloads, in
parts or whole) to the next route for the rest of the engine's life, with one warning
naming the error. Uploads in parts go next as single CRT PUTs (up to S3's 5 GiB limit
for one PUT: on ``rclone serve s3`` that moved 2 GiB of checkpoints at 200-215 MB/s
where botocore's multipart upload managed 140-160, with a third of the CPU), then
through the classic client; everything else goes straight to the classic client.

A transfer is complete only when its subscriber's ``on_done`` ran: s3transfer renames
a downloaded file into place in a callback that runs before the subscribers, while
the CRT future may already report success before it (measured here, see the lab
notes), so :class:`Transfer` waits for ``on_done``, never for the future alone.

Importing this module imports neither boto3 nor awscrt; building the first transfer does.

::

    engine = Engine(environ, settings.s3)
    transfer = engine.upload("/opt/ml/checkpoints/step-9.pt", "bucket", "ckpt/step-9.pt", size=st.st_size)
    engine.wait(transfer, cancelled=abort_event)      # raises the transfer's error
    engine.close()
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlparse

from smtk.s3 import client_settings, make_client
from smtk.s3.retry import Aborted, is_incompatible
from smtk.s3.templates import template_serializer
from smtk.settings import S3Settings

log = logging.getLogger("smtk.s3")

Kind = Literal["crt", "classic"]
Direction = Literal["upload", "download"]

#: Files at least this large are sent in parts (both clients).
MULTIPART_THRESHOLD = 16 * 1024 * 1024
#: Size of one part. Every request pays a fixed cost: a first-byte latency on S3, and on
#: servers that read the whole object for each ranged GET (moto), that read. 16 MiB parts
#: halve the requests of 8 MiB ones for the same parallelism on checkpoint-sized objects:
#: benchmarks/sync.py measured restores of 8 x 256 MiB at 69 -> 137 MB/s on moto and
#: 432 -> 735 MB/s on rclone, and checkpoint uploads no slower (158 -> 162, 138 -> 192).
PART_SIZE = 16 * 1024 * 1024
#: The largest object one PUT may create (S3's limit).
MAX_PUT = 5 * 1024**3
#: Event-loop threads of the CRT client: enough for tens of Gbit/s, few on a big host.
_CRT_THREADS = 8


class Transfer:
    """One upload or download: done when its ``on_done`` ran; :meth:`result` then raises its error."""

    def __init__(
        self,
        what: str,
        direction: Direction,
        size: int | None,
        kind: Kind,
        progress: Callable[[int], None] | None,
        on_done: Callable[[Transfer], None] | None,
        whole: bool = False,
    ) -> None:
        #: ``s3://bucket/key`` (for messages).
        self.what = what
        self.direction = direction
        #: Bytes to move (None: not known before it starts).
        self.size = size
        #: The client that carried it.
        self.kind = kind
        #: Sent as one request although large enough for parts (a CRT fallback route).
        self.whole = whole
        self._progress = progress
        self._on_done = on_done
        self._finished = threading.Event()
        self._future: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is done (waits up to ``timeout`` seconds)."""
        return self._finished.wait(timeout)

    def result(self) -> None:
        """Once done: returns if it succeeded, raises its error otherwise."""
        if self._error is not None:
            raise self._error
        if self._future is not None:
            self._future.result()

    def cancel(self) -> None:
        """Ask the client to stop it (it then ends with an error)."""
        future = self._future
        if future is not None and not self.done():
            future.cancel()

    # -- called by the client (its threads) --------------------------------------------

    def _queued(self, future: Any) -> None:
        self._future = future

    def _moved(self, size: int) -> None:
        if self._progress is not None and size:
            self._progress(size)

    def _finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self._error = error
        self._finished.set()
        if self._on_done is not None:
            self._on_done(self)


def _subscriber(transfer: Transfer, size: int | None) -> Any:
    """An s3transfer subscriber that reports to ``transfer``."""
    return _subscriber_class()(transfer, size)


@functools.cache
def _subscriber_class() -> type[Any]:
    """The subscriber type, made once s3transfer is loaded (this module must not import it)."""
    from s3transfer.subscribers import BaseSubscriber

    class Report(BaseSubscriber):
        def __init__(self, transfer: Transfer, size: int | None) -> None:
            self.transfer = transfer
            self.size = size

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            self.transfer._queued(future)
            provide = getattr(future.meta, "provide_transfer_size", None)
            if self.size is not None and callable(provide):
                provide(self.size)  # the classic download then needs no HeadObject

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            self.transfer._moved(bytes_transferred)

        def on_done(self, future: Any, **kwargs: Any) -> None:
            self.transfer._queued(future)
            self.transfer._finish()

    return Report


class Engine:
    """Uploads and downloads for one part of smtk (sync, restore, code, channels); see the module doc."""

    def __init__(
        self,
        environ: Mapping[str, str],
        settings: S3Settings,
        *,
        threads: int = 10,
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        self._environ = dict(environ)
        self._settings = settings
        self._threads = threads
        self._threshold = multipart_threshold
        self._lock = threading.Lock()
        self._client: Any = None
        self._classic: Any = None
        self._crt: Any = None
        self._crt_whole: Any = None
        self._crt_factory: Callable[[int], Any] | None = None
        self._kind: Kind | None = None
        self._why_classic = ""
        #: (direction, in parts, whole) routes on the CRT client the endpoint refused.
        self._refused: set[tuple[Direction, bool, bool]] = set()

    # -- the clients, built on first use -------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client (listing, HEAD, DELETE; the classic transfers)."""
        with self._lock:
            if self._client is None:
                self._client = make_client(
                    self._environ, max_pool_connections=max(self._threads, 10) + 4, retries=2
                )
            return self._client

    @property
    def kind(self) -> Kind:
        """``crt`` or ``classic``: which client carries transfers (decided on first use)."""
        client = self.client
        with self._lock:
            if self._kind is None:
                self._kind, self._why_classic = self._choose(client)
                if self._kind == "classic" and self._settings.client == "crt":
                    log.warning("SMTK_S3_CLIENT=crt: using botocore's classic client, %s", self._why_classic)
                else:
                    log.debug(
                        "S3 transfers: %s client%s",
                        self._kind,
                        f" ({self._why_classic})" if self._why_classic else "",
                    )
            return self._kind

    def _choose(self, client: Any) -> tuple[Kind, str]:
        if self._settings.client == "classic":
            return "classic", "SMTK_S3_CLIENT=classic"
        try:
            import awscrt.s3  # noqa: F401
            import s3transfer.crt  # noqa: F401
        except ImportError as exc:
            return "classic", f"AWS's CRT client is not installed ({exc})"
        proxy = _proxy_for(client.meta.endpoint_url, self._environ)
        if proxy:
            return "classic", f"a proxy is configured for the endpoint ({proxy}) and the CRT client has none"
        try:
            self._crt = self._build_crt(client)
        except _NoCredentials:
            return "classic", "no AWS credentials were found"
        return "crt", ""

    def _build_crt(self, client: Any) -> Any:
        import awscrt.io
        import awscrt.s3
        from botocore.config import Config
        from botocore.session import get_session
        from s3transfer.crt import (
            BotocoreCRTCredentialsWrapper,
            BotocoreCRTRequestSerializer,
            CRTTransferManager,
        )

        session = get_session()
        credentials = session.get_credentials()
        if credentials is None:
            raise _NoCredentials
        region = client.meta.region_name or "us-east-1"
        secure = urlparse(client.meta.endpoint_url or "https://").scheme != "http"
        tls_options = None
        bundle = session.get_config_variable("ca_bundle") if secure else None
        if bundle:
            context = awscrt.io.TlsContextOptions()
            context.override_default_trust_store_from_path(ca_filepath=bundle)
            tls_options = awscrt.io.ClientTlsContext(context).new_connection_options()
        group = awscrt.io.EventLoopGroup(min(os.cpu_count() or 1, _CRT_THREADS))
        bootstrap = awscrt.io.ClientBootstrap(group, awscrt.io.DefaultHostResolver(group))
        provider = _crt_credentials(credentials, BotocoreCRTCredentialsWrapper)
        kwargs = {**client_settings(self._environ), "region_name": region}
        kwargs["config"] = Config(s3=client.meta.config.s3) if client.meta.config.s3 else Config()
        serializer = BotocoreCRTRequestSerializer(session, kwargs)
        if self._settings.templates:
            serializer = template_serializer(serializer)

        def manager(threshold: int) -> Any:
            crt_client = awscrt.s3.S3Client(
                bootstrap=bootstrap,
                region=region,
                credential_provider=provider,
                tls_mode=awscrt.s3.S3RequestTlsMode.ENABLED
                if secure
                else awscrt.s3.S3RequestTlsMode.DISABLED,
                tls_connection_options=tls_options,
                part_size=PART_SIZE,
                multipart_upload_threshold=threshold,
                memory_limit=self._settings.memory_limit,
            )
            return CRTTransferManager(crt_client, serializer)

        self._crt_factory = manager
        return manager(self._threshold)

    def _manager(self, direction: Direction, size: int | None) -> tuple[Kind, bool, Any]:
        """(client, whole, manager): the first route the endpoint has not refused."""
        in_parts = self._in_parts(direction, size)
        if self.kind == "crt":
            if (direction, in_parts, False) not in self._refused:
                return "crt", False, self._crt
            if (
                direction == "upload"
                and in_parts
                and size is not None
                and size <= MAX_PUT
                and (direction, in_parts, True) not in self._refused
            ):
                return "crt", True, self._whole()
        client = self.client
        with self._lock:
            if self._classic is None:
                from boto3.s3.transfer import TransferConfig
                from s3transfer.manager import TransferManager

                config = TransferConfig(
                    multipart_threshold=self._threshold,
                    multipart_chunksize=PART_SIZE,
                    max_concurrency=self._threads,
                )
                self._classic = TransferManager(client, config)
            return "classic", False, self._classic

    def _whole(self) -> Any:
        """The CRT manager that sends every upload up to 5 GiB as one PUT (built on first use)."""
        with self._lock:
            if self._crt_whole is None and self._crt_factory is not None:
                self._crt_whole = self._crt_factory(MAX_PUT + 1)
            return self._crt_whole

    # -- transfers ---------------------------------------------------------------------

    def upload(
        self,
        path: str,
        bucket: str,
        key: str,
        *,
        size: int,
        progress: Callable[[int], None] | None = None,
        on_done: Callable[[Transfer], None] | None = None,
    ) -> Transfer:
        """Start sending the file ``path`` (``size`` bytes) to ``s3://bucket/key``."""
        kind, whole, manager = self._manager("upload", size)
        transfer = Transfer(f"s3://{bucket}/{key}", "upload", size, kind, progress, on_done, whole)
        if kind == "classic" and size < self._threshold:
            # One PutObject in this thread: the manager's queues cost more than the request.
            try:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=bucket, Key=key, Body=body)
            except Exception as exc:
                transfer._finish(exc)
            else:
                transfer._moved(size)
                transfer._finish()
            return transfer
        subscribers = [_subscriber(transfer, None)]
        self._submit(transfer, lambda: manager.upload(path, bucket, key, subscribers=subscribers))
        return transfer

    def download(
        self,
        bucket: str,
        key: str,
        path: str,
        *,
        size: int | None = None,
        progress: Callable[[int], None] | None = None,
        on_done: Callable[[Transfer], None] | None = None,
    ) -> Transfer:
        """Start fetching ``s3://bucket/key`` into ``path`` (written under a temporary name, then renamed)."""
        kind, whole, manager = self._manager("download", size)
        transfer = Transfer(f"s3://{bucket}/{key}", "download", size, kind, progress, on_done, whole)
        subscribers = [_subscriber(transfer, size)]
        self._submit(transfer, lambda: manager.download(bucket, key, path, subscribers=subscribers))
        return transfer

    @staticmethod
    def _submit(transfer: Transfer, submit: Callable[[], Any]) -> None:
        try:
            future = submit()
        except Exception as exc:  # refused before it started (bad arguments, shut down)
            transfer._finish(exc)
            return
        transfer._queued(future)

    def wait(self, transfer: Transfer, cancelled: threading.Event | None = None) -> None:
        """Wait for ``transfer`` and raise its error; :class:`~smtk.s3.retry.Aborted`
        (after cancelling it) as soon as ``cancelled`` is set."""
        while not transfer.wait(0.25):
            if cancelled is not None and cancelled.is_set():
                transfer.cancel()
                raise Aborted(f"{transfer.what}: stopped")
        transfer.result()

    def complete(self, start: Callable[[], Transfer], cancelled: threading.Event | None = None) -> None:
        """Start a transfer with ``start()`` and wait for it (as :meth:`wait`); while the
        endpoint's answer does not suit the route it took, start it again on the next one
        (at most twice: single CRT PUTs, then the classic client)."""
        transfer = start()
        while True:
            try:
                self.wait(transfer, cancelled)
                return
            except Aborted:
                raise
            except Exception as exc:
                if not self.fall_back(transfer, exc):
                    raise
            transfer = start()

    def fall_back(self, transfer: Transfer, error: BaseException) -> bool:
        """Whether ``transfer`` failed because the endpoint does not suit the CRT client; if
        so, later transfers of its kind (upload or download, in parts or whole) take the
        next route: single CRT PUTs for uploads in parts, then the classic client (the
        caller retries)."""
        if transfer.kind != "crt" or not is_incompatible(error):
            return False
        in_parts = self._in_parts(transfer.direction, transfer.size)
        route = (transfer.direction, in_parts, transfer.whole)
        with self._lock:
            first = route not in self._refused
            self._refused.add(route)
        if first:
            kind, whole, _ = self._manager(transfer.direction, transfer.size)
            then = "single PUTs on the CRT client" if kind == "crt" and whole else "botocore's classic client"
            what = f"{transfer.direction}s" + (
                " sent whole" if transfer.whole else " in parts" if in_parts else " of small files"
            )
            log.warning(
                "the S3 endpoint's answer does not suit AWS's CRT client (%s: %s); %s go through %s "
                "from now on",
                transfer.what,
                error,
                what,
                then,
            )
        return True

    def _in_parts(self, direction: Direction, size: int | None) -> bool:
        """Whether a transfer of ``size`` bytes may be split into parts (unknown: it may)."""
        return size is None or size >= (self._threshold if direction == "upload" else PART_SIZE)

    def close(self, *, cancel: bool = False, wait: bool = True) -> None:
        """Shut the clients down (``cancel``: stop what is in flight); ``wait=False`` returns at once."""
        with self._lock:
            managers = [m for m in (self._crt, self._crt_whole, self._classic) if m is not None]
            self._crt = self._crt_whole = self._classic = None
        for manager in managers:
            if wait:
                manager.shutdown(cancel=cancel)
            else:
                # shutdown() waits for running transfers: never let that wait block the caller.
                threading.Thread(
                    target=manager.shutdown, kwargs={"cancel": cancel}, name="smtk-s3-close", daemon=True
                ).start()


def _crt_credentials(credentials: Any, wrapper: Any) -> Any:
    """The CRT client's credentials provider for botocore's ``credentials``.

    The CRT client asks its provider before signing every request. s3transfer's wrapper
    answers from Python: each answer takes the GIL from a CRT event-loop thread, which
    then waits behind smtk's busy threads (up to the 5 ms switch interval) while every
    connection on that loop stalls. Credentials that never change (keys from the
    environment or a file) are handed to the CRT client once instead; refreshable ones
    (a role's, the platform's container credentials) keep going through the wrapper,
    so that they are renewed.
    """
    from awscrt.auth import AwsCredentialsProvider
    from botocore.credentials import RefreshableCredentials

    if isinstance(credentials, RefreshableCredentials):
        return wrapper(credentials).to_crt_credentials_provider()
    frozen = credentials.get_frozen_credentials()
    return AwsCredentialsProvider.new_static(frozen.access_key, frozen.secret_key, frozen.token)


class _NoCredentials(Exception):
    """The credentials chain found nothing (botocore reports it better than the CRT client)."""


def _proxy_for(endpoint: str | None, environ: Mapping[str, str]) -> str:
    """The proxy URL configured for ``endpoint`` in ``environ`` (``HTTPS_PROXY``, ``ALL_PROXY``,
    ... unless ``NO_PROXY`` names the host), or ""."""
    parsed = urlparse(endpoint or "https://s3.amazonaws.com")
    scheme = parsed.scheme or "https"
    lowered = {name.lower(): value for name, value in environ.items() if name.lower().endswith("_proxy")}
    proxy = lowered.get(f"{scheme}_proxy") or lowered.get("all_proxy") or ""
    if not proxy or _bypassed(parsed.hostname or "", lowered.get("no_proxy", "")):
        return ""
    return proxy


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (``*``, names, ``.suffixes``, addresses, CIDR blocks) covers ``host``."""
    host = host.lower().rstrip(".")
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False
