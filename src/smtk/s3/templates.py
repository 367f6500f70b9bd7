"""CRT requests for plain PUTs and GETs built from a per-bucket template, not from botocore each time.

``s3transfer.crt`` asks a request serializer (its public ``BaseCRTRequestSerializer``
interface) for the unsigned HTTP request of every transfer; the CRT client signs and
sends it. The stock ``BotocoreCRTRequestSerializer`` runs botocore's whole API-call
pipeline for that (parameter validation, endpoint rules, event hooks, a fake response
parsed back): about a millisecond of Python per object, which is most of the CPU
that smtk spends on a burst of small files (measured with py-spy on 5,000 files:
45% of the time the GIL was held).

For one bucket and one kind of request, that request differs from one key to the
next only in the key's percent-encoding in the path and in ``Content-Length``. So
:class:`TemplateSerializer` lets botocore build the first request for each (kind,
bucket), keeps it as a template when the key is found exactly where botocore put it,
and builds the next ones from the template. Everything else goes to botocore as
before: other kinds of requests, extra arguments, access-point ARNs and S3 Express
buckets (their own signing), keys with empty or dot segments (path normalisation
rules), and any bucket whose first request did not match. The per-request headers
``amz-sdk-invocation-id`` and ``amz-sdk-request`` describe botocore's own retries,
which do not happen here (the CRT client retries), and are left out.

``tests/unit/test_s3_templates.py`` checks, over generated buckets, keys and endpoint
styles, that every request built from a template equals botocore's own but for those
two headers.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

#: Request kinds built from templates, with the extra arguments they may carry
#: (``s3transfer`` sets ``ContentLength`` and a placeholder ``ContentMD5`` on uploads).
_KINDS = {
    "put_object": frozenset({"ContentLength", "ContentMD5"}),
    "get_object": frozenset(),
}
#: Headers that belong to one botocore invocation, not to the request's meaning.
_PER_INVOCATION = frozenset({"content-length", "amz-sdk-invocation-id", "amz-sdk-request"})
#: A key whose path segments are all non-empty and not "." or "..": no normalisation
#: rule can treat it differently from the template's key.
_PLAIN_KEY = re.compile(r"(?!/)(?!.*//)(?!.*(?:^|/)\.{1,2}(?:/|$)).+", re.DOTALL)


def plain_key(key: str) -> bool:
    """Whether ``key`` is safe to put into a template (see the module doc)."""
    return _PLAIN_KEY.fullmatch(key) is not None and not key.endswith("/")


def plain_bucket(bucket: str) -> bool:
    """A bucket name, not an access-point ARN or an S3 Express directory bucket."""
    return ":" not in bucket and "/" not in bucket and not bucket.endswith("--x-s3")


class TemplateSerializer:
    """An ``s3transfer.crt`` request serializer: templates where safe, ``delegate`` otherwise.

    Made through :func:`template_serializer` (the base class lives in
    ``s3transfer.crt``, which this module must not import at its top).
    """

    def __init__(self, delegate: Any) -> None:
        from botocore.utils import percent_encode

        self._delegate = delegate
        self._encode = percent_encode
        self._lock = threading.Lock()
        #: (kind, bucket) -> (method, path before the key, path after it, headers); None: not templatable.
        self._templates: dict[tuple[str, str], tuple[str, str, str, list[tuple[str, str]]] | None] = {}

    def serialize_http_request(self, transfer_type: str, future: Any) -> Any:
        call = future.meta.call_args
        allowed = _KINDS.get(transfer_type)
        if allowed is None or not plain_bucket(call.bucket) or not plain_key(call.key):
            return self._delegate.serialize_http_request(transfer_type, future)
        if not set(call.extra_args) <= allowed:
            return self._delegate.serialize_http_request(transfer_type, future)
        slot = (transfer_type, call.bucket)
        with self._lock:
            known = slot in self._templates
            template = self._templates.get(slot)
        if template is None:
            request = self._delegate.serialize_http_request(transfer_type, future)
            if not known:
                learned = self._learn(request, call.key)
                with self._lock:
                    self._templates[slot] = learned
            return request
        import awscrt.http

        method, before, after, headers = template
        length = str(call.extra_args.get("ContentLength", 0))
        return awscrt.http.HttpRequest(
            method=method,
            path=before + self._encode(call.key, safe="/~") + after,
            headers=awscrt.http.HttpHeaders([*headers, ("Content-Length", length)]),
        )

    def _learn(self, request: Any, key: str) -> tuple[str, str, str, list[tuple[str, str]]] | None:
        """The template of ``request`` (made for ``key``), or None if the path does not end with the key."""
        encoded = self._encode(key, safe="/~")
        path: str = request.path
        path_only, _, query = path.partition("?")
        if not path_only.endswith("/" + encoded):
            return None
        before = path_only[: -len(encoded)]
        after = f"?{query}" if query else ""
        headers = [(name, value) for name, value in request.headers if name.lower() not in _PER_INVOCATION]
        return request.method, before, after, headers

    def translate_crt_exception(self, exception: BaseException) -> Any:
        return self._delegate.translate_crt_exception(exception)


def template_serializer(delegate: Any) -> Any:
    """A :class:`TemplateSerializer` that is also an ``s3transfer.crt.BaseCRTRequestSerializer``."""
    return _serializer_class()(delegate)


@functools.cache
def _serializer_class() -> type[TemplateSerializer]:
    from s3transfer.crt import BaseCRTRequestSerializer

    class Serializer(TemplateSerializer, BaseCRTRequestSerializer):
        pass

    return Serializer
