"""The Glance driver: Glance's v2 API through python-glanceclient.

This is the only module that imports glanceclient, keystoneauth or requests.
Their exceptions are translated to ``imagefs.errors`` in ``_translate``, the
one place that knows them.

Image data is read through the keystoneauth session directly, not through
``glanceclient.images.data()``: that call takes no range, and glanceclient
URL-quotes header values, so a ``Range`` header sent through it reaches Glance
as ``bytes%3D0-1023`` and is refused with 416.  What Glance does with ranges:

- one range per request, answered 206 with ``Content-Range``; an end past the
  image is clamped; a start at or past the end is 416;
- ``Content-MD5`` is the *whole* image's md5, even on a 206: never checked
  against a part;
- stores without random access (rbd, swift, s3, http) answer every Range
  request 400: that is ``RangesRefused``, and the caller decides how to read
  such an image instead (this driver keeps no memory of it);
- a queued image has ``size`` None and its data GET answers 204 (a *ranged*
  GET of it fails inside Glance with a 500: callers check the status first).

A context with ``auth_token_file`` gets a session whose auth plugin is
``TokenFileAuth``: keystoneauth's Session retries any request answered 401
once after asking the plugin to ``invalidate``, and the plugin answers that by
reading the file again.  Record calls (through glanceclient) and data GETs
(through the session) go through the same session, so both pick up a token
rotated in the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import threading
import urllib.parse
from typing import Any, Iterator

import glanceclient
import requests
import urllib3
from glanceclient import exc as gc_exc
from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import session as ksa_session
from keystoneauth1 import token_endpoint

from ..context import RequestContext
from ..errors import (BackendUnavailable, ConfigError, ImageBadRequest, ImageConflict,
                      ImagefsError, ImageError, ImageNoData, ImageNotAuthorized, ImageNotFound,
                      ImageProtected, ImageQuotaExceeded, RangesRefused)
from ..records import make_record

log = logging.getLogger(__name__)

CHUNK = 256 << 10
#: An image URI's path; the API checks the id.
_IMAGE_PATH = re.compile(r"^(?P<base>.*?)/v2/images/(?P<id>[^/]+)/?$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def error_for_status(status: int, message: str) -> Exception:
    """The imagefs error for an HTTP status from Glance."""
    if status == 404:
        return ImageNotFound(message)
    if status in (401, 403):
        return ImageNotAuthorized(message, status)
    if status == 400:
        return ImageBadRequest(message)
    if status == 409:
        return ImageConflict(message)
    if status == 413:
        return ImageQuotaExceeded(message)
    if status >= 500 or status == 429:
        return BackendUnavailable(f"{message} (HTTP {status})")
    return ImageError(message, status)


@contextlib.contextmanager
def _translate(what: str):
    """Turn glanceclient / keystoneauth / requests exceptions into ours."""
    try:
        yield
    except gc_exc.HTTPException as e:
        raise error_for_status(e.code, f"{what}: {e.details or e}") from e
    except (gc_exc.CommunicationError, gc_exc.InvalidEndpoint, ksa_exc.ConnectionError,
            requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError,
            ConnectionError, TimeoutError) as e:
        raise BackendUnavailable(f"{what}: cannot reach the image service: {e}") from e
    except ksa_exc.HttpError as e:
        raise error_for_status(e.http_status, f"{what}: {e.message}") from e
    except (ksa_exc.EndpointNotFound, ksa_exc.MissingAuthPlugin, ksa_exc.NoMatchingPlugin) as e:
        raise ConfigError(f"{what}: {e}") from e
    except ksa_exc.AuthorizationFailure as e:
        raise ImageNotAuthorized(f"{what}: authentication failed: {e}") from e
    except ksa_exc.DiscoveryFailure as e:
        raise BackendUnavailable(f"{what}: {e}") from e


@contextlib.contextmanager
def _schema_errors():
    """glanceclient checks values against the image schema (which it fetches
    from Glance) before sending, and reports a violation as TypeError."""
    try:
        yield
    except TypeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid value"
        raise ImageBadRequest(f"rejected by the image schema: {first}") from e


def _response_error(resp, what: str) -> Exception:
    """The error for a failed data GET; its body is quoted only if it is text."""
    is_text = resp.headers.get("Content-Type", "").startswith(("application/json", "text/"))
    text = resp.text[:300].strip() if is_text else ""
    return error_for_status(resp.status_code, f"{what}: {text or resp.reason}")


def _nothing() -> Iterator[bytes]:
    """An empty body that, like every other, can be closed."""
    yield from ()


class _IterReader:
    """A file-like ``read()`` over an iterator of bytes (glanceclient uploads
    read from file objects only)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


def read_token_file(path: str) -> tuple[str, int]:
    """The token in ``path`` with surrounding whitespace stripped, and the file's
    permission bits.  ConfigError if the file is missing, unreadable, empty or
    holds more than one word."""
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            raw = f.read(65536)
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path} does not hold text") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    if len(token.split()) > 1:
        raise ConfigError(f"token file {path} holds more than one word; it must hold the "
                          "token alone")
    return token, mode


class TokenFileAuth(token_endpoint.Token):
    """A keystoneauth auth plugin: Glance at ``endpoint``, the token in ``path``.

    The file is read once here (ConfigError if that fails; a warning if group
    or others may read it).  ``get_token`` answers the token last read.
    ``invalidate``, which the Session calls when a request is answered 401
    before it retries that request once, reads the file again and returns True
    when it now holds a token other than the one the calling thread sent; a
    file that cannot be read again keeps the token read before (a warning).
    Safe to use from many threads.
    """

    def __init__(self, endpoint: str, path: str):
        token, mode = read_token_file(path)
        if mode & 0o044:
            log.warning("token file %s is readable by group or others (mode %04o); "
                        "chmod 600 it", path, mode)
        super().__init__(endpoint, token)
        self.path = path
        self._lock = threading.Lock()
        self._sent = threading.local()

    def get_token(self, session, **kwargs) -> str:
        token = self.token
        self._sent.token = token
        return token

    def invalidate(self) -> bool:
        with self._lock:
            try:
                token, _ = read_token_file(self.path)
            except ConfigError as exc:
                log.warning("%s; keeping the token read before", exc)
                return False
            if token != self.token:
                log.info("token file %s holds a new token", self.path)
                self.token = token
        return token != getattr(self._sent, "token", None)


class GlanceDriver:
    """Glance v2 at ``endpoint`` (e.g. ``http://glance:9292``).

    ``endpoint`` may be None when every context brings a keystoneauth session
    whose catalog has an image endpoint.  ``timeout`` bounds each HTTP
    request's connect and each read of the socket.
    """

    name = "glance"

    def __init__(self, endpoint: str | None = None, *, timeout: float = 30.0,
                 interface: str = "public", region_name: str | None = None):
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        if self.endpoint and self.endpoint.endswith("/v2"):
            self.endpoint = self.endpoint[:-3]
        self.timeout = timeout
        self.interface = interface
        self.region_name = region_name
        self._lock = threading.Lock()
        self._sessions: dict[Any, tuple[Any, str, Any]] = {}

    def __repr__(self) -> str:
        return f"GlanceDriver({self.endpoint!r})"

    # ---- addressing -------------------------------------------------------
    def parse_uri(self, uri: str) -> str | None:
        """``http(s)://host[:port][/prefix]/v2/images/<id>`` on our endpoint's host."""
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme not in ("http", "https"):
            return None
        m = _IMAGE_PATH.match(parsed.path)
        if not m:
            return None
        if self.endpoint:
            ours = urllib.parse.urlsplit(self.endpoint)
            if ours.netloc != parsed.netloc:
                return None
        return m.group("id")

    # ---- clients ----------------------------------------------------------
    def _clients(self, ctx: RequestContext):
        """(keystoneauth session, endpoint, glanceclient client) for ``ctx``."""
        key = id(ctx.session) if ctx.session is not None else \
            ("file", ctx.auth_token_file) if ctx.auth_token_file else ctx.auth_token
        with self._lock:
            cached = self._sessions.get(key)
            if cached is not None:
                return cached
        if ctx.session is not None:
            session = ctx.session
            endpoint = self.endpoint
            if endpoint is None:
                with _translate("finding the image endpoint"):
                    endpoint = session.get_endpoint(service_type="image", interface=self.interface,
                                                    region_name=self.region_name)
                if not endpoint:
                    raise ConfigError("no image endpoint in the service catalog")
                endpoint = endpoint.rstrip("/")
                if endpoint.endswith("/v2"):
                    endpoint = endpoint[:-3]
        elif ctx.auth_token or ctx.auth_token_file:
            if not self.endpoint:
                raise ConfigError("a token needs an image endpoint (--os-image-url / OS_IMAGE_URL)")
            endpoint = self.endpoint
            auth = TokenFileAuth(endpoint, ctx.auth_token_file) if ctx.auth_token_file else \
                token_endpoint.Token(endpoint, ctx.auth_token)
            session = ksa_session.Session(auth=auth, timeout=self.timeout)
        else:
            raise ImageNotAuthorized("no credentials: the context has no token, token file or "
                                     "session")
        client = glanceclient.Client("2", endpoint=endpoint, session=session,
                                     global_request_id=ctx.request_id)
        entry = (session, endpoint, client)
        with self._lock:
            if len(self._sessions) > 64:
                self._sessions.clear()
            self._sessions[key] = entry
        return entry

    def check_credentials(self, ctx: RequestContext) -> None:
        """ConfigError now if a token or token-file context cannot be used at all
        (no endpoint; a token file missing, unreadable or empty).  Sends nothing."""
        if ctx.session is None:
            self._clients(ctx)

    def _images(self, ctx: RequestContext):
        return self._clients(ctx)[2].images

    # ---- records ----------------------------------------------------------
    @contextlib.contextmanager
    def _asking(self, ctx, what: str):
        """``_translate``, and a 404 or 300 checked against the endpoint: a URL
        with a wrong path answers those to every image request, and "image not
        found" would then send the operator looking for the wrong thing."""
        try:
            with _translate(what):
                yield
        except ImageError as exc:
            if exc.status in (300, 404):
                self._check_api(ctx, exc)
            raise

    def _check_api(self, ctx, cause: Exception) -> None:
        """ConfigError if the endpoint has no image API (its image schema is
        not there); anything else leaves ``cause`` to be raised."""
        session, endpoint, _ = self._clients(ctx)
        try:
            resp = session.get(f"{endpoint}/v2/schemas/image", raise_exc=False,
                               authenticated=True, timeout=self.timeout, log=False)
        except Exception:  # unreachable now: the first error tells it better
            return
        if resp.status_code in (300, 404):
            raise ConfigError(f"no image API at {endpoint} (GET /v2/schemas/image answers "
                              f"{resp.status_code} {resp.reason}): check the URL's path, "
                              "e.g. http://glance:9292") from cause

    def get(self, ctx, image_id, include_locations) -> dict:
        with self._asking(ctx, f"image {image_id}"):
            raw = dict(self._images(ctx).get(image_id))
        locations = raw.get("locations") or []
        if include_locations and not locations and raw.get("direct_url"):
            locations = [{"url": raw["direct_url"], "metadata": {}}]
        return make_record(raw, include_locations, locations)

    def list(self, ctx, filters, *, marker, limit, sort_key, sort_dir, page_size) -> Iterator[dict]:
        kwargs: dict[str, Any] = {"filters": dict(filters), "page_size": page_size,
                                  "sort_key": sort_key, "sort_dir": sort_dir}
        if marker:
            kwargs["marker"] = marker
        if limit:
            kwargs["limit"] = limit
        with self._asking(ctx, "listing images"):
            for image in self._images(ctx).list(**kwargs):
                yield make_record(dict(image))

    def create(self, ctx, fields, props) -> dict:
        with self._asking(ctx, "creating an image"), _schema_errors():
            raw = dict(self._images(ctx).create(**fields, **props))
        return make_record(raw)

    def upload(self, ctx, image_id, chunks) -> None:
        with self._asking(ctx, f"uploading data to image {image_id}"):
            self._images(ctx).upload(image_id, _IterReader(chunks))

    def update(self, ctx, image_id, fields, props, purge_props) -> dict:
        fields = dict(fields)
        tags = fields.pop("tags", None)
        current = self.get(ctx, image_id, False) if purge_props or tags is not None else None
        record = None
        if fields or props or purge_props:
            remove = [k for k in current["properties"] if k not in props] if purge_props else []
            with self._asking(ctx, f"updating image {image_id}"), _schema_errors():
                raw = dict(self._images(ctx).update(image_id, remove_props=remove or None,
                                                    **fields, **props))
            record = make_record(raw)
        if tags is not None:
            # Tag by tag (Glance's tag calls), so that tags others add or remove at
            # the same time, other than these, are kept.
            old = set(current["tags"])
            self._change_tags(ctx, image_id, sorted(set(tags) - old), sorted(old - set(tags)))
            record = self.get(ctx, image_id, False)
        return record

    def _change_tags(self, ctx, image_id, add, remove) -> None:
        tags = self._clients(ctx)[2].image_tags
        with self._asking(ctx, f"tagging image {image_id}"):
            for tag in add:
                tags.update(image_id, tag)
        for tag in remove:
            try:
                with self._asking(ctx, f"untagging image {image_id}"):
                    tags.delete(image_id, tag)
            except ImageNotFound:  # the tag (or the image: the get below says which)
                self.get(ctx, image_id, False)

    def delete(self, ctx, image_id) -> None:
        try:
            with self._asking(ctx, f"deleting image {image_id}"):
                self._images(ctx).delete(image_id)
        except ImageNotAuthorized as exc:
            # Glance answers a protected image's delete 403, as it does a delete
            # of another project's image: the record tells them apart.
            if exc.status == 403 and self._is_protected(ctx, image_id):
                raise ImageProtected(f"image {image_id} is protected and cannot be "
                                     "deleted") from exc
            raise

    def _is_protected(self, ctx, image_id) -> bool:
        try:
            return self.get(ctx, image_id, False)["protected"]
        except ImagefsError:
            return False

    # ---- data -------------------------------------------------------------
    def _get_file(self, ctx, image_id: str, range_header: str | None,
                  timeout: float | None = None):
        session, endpoint, _ = self._clients(ctx)
        headers = {"X-Openstack-Request-ID": ctx.request_id}
        if range_header:
            headers["Range"] = range_header
        with _translate(f"reading image {image_id}"):
            return session.get(f"{endpoint}/v2/images/{image_id}/file", headers=headers,
                               raise_exc=False, stream=True, timeout=timeout or self.timeout,
                               authenticated=True, log=False)

    def _stream_body(self, resp, image_id: str, length: int | None) -> Iterator[bytes]:
        """The body of ``resp`` in chunks; exactly ``length`` bytes when given."""
        got = 0
        # The raw body, decoded only if it is encoded: requests' iter_content would
        # pass every byte through urllib3's decode buffer, one more copy of it.
        decode = bool(resp.headers.get("Content-Encoding"))
        with contextlib.closing(resp), _translate(f"reading image {image_id}"):
            for chunk in resp.raw.stream(CHUNK, decode_content=decode):
                got += len(chunk)
                yield chunk
        if length is not None and got < length:
            raise BackendUnavailable(f"reading image {image_id}: the response ended after "
                                     f"{got} of {length} bytes")

    def open_stream(self, ctx, image_id, offset, end=None, timeout=None) -> Iterator[bytes]:
        if end is not None and end <= offset:
            return _nothing()
        ranged = offset > 0 or end is not None
        header = f"bytes={offset}-{'' if end is None else end - 1}" if ranged else None
        resp = self._get_file(ctx, image_id, header, timeout)
        if resp.status_code == 400 and ranged:
            resp.close()
            raise RangesRefused(f"image {image_id}: the store refuses Range requests")
        if resp.status_code == 416:
            resp.close()
            return _nothing()
        if resp.status_code == 204:
            resp.close()
            raise ImageNoData(f"image {image_id} has no data")
        if resp.status_code == 206:
            start, last = self._content_range(resp, image_id)
            if start != offset or (end is not None and last >= end):
                resp.close()
                raise BackendUnavailable(f"image {image_id}: asked for bytes {header[6:]}, "
                                         f"got {start}-{last}")
            return self._stream_body(resp, image_id, last + 1 - start)
        if resp.status_code == 200:
            if ranged:  # a server that ignored the Range header: not what was asked
                resp.close()
                raise RangesRefused(f"image {image_id}: the service ignored a Range request")
            return self._stream_body(resp, image_id, None)
        resp.close()
        raise _response_error(resp, f"reading image {image_id}")

    @staticmethod
    def _content_range(resp, image_id) -> tuple[int, int]:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m:
            raise BackendUnavailable(f"image {image_id}: 206 without a valid Content-Range")
        return int(m.group(1)), int(m.group(2))

    def read(self, ctx, image_id, offset, length, timeout=None) -> bytes:
        if length <= 0:
            return b""
        parts = []
        with contextlib.closing(self.open_stream(ctx, image_id, offset, offset + length,
                                                 timeout)) as stream:
            parts.extend(stream)
        return b"".join(parts)
