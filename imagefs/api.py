"""The image API: ``nova.image.api.API``'s surface, with one contract each.

Every method takes a ``RequestContext`` first (see ``imagefs.context``) and an
image named by ``id_or_uri``:

- a bare UUID goes to the default driver;
- ``http(s)://host[:port]/v2/images/<id>`` goes to the Glance driver whose
  endpoint is on that host;
- ``imagefs-local:<id>`` goes to the embedded store;
- anything else is ``ImageBadRequest``, naming what is accepted.

Records are plain dicts (``imagefs.records``).  Errors are ``imagefs.errors``
only.  Reads (``get``, listing pages, data) are retried on
``BackendUnavailable`` within ``RetryPolicy``; writes are tried once.

``download`` has one contract whatever its arguments (verified bytes, a
temporary file renamed into place, resumed transfers, the direct hook): it
is written down and kept in ``imagefs.download``.

For reading parts of an image there are ``read`` (one range, exact) and
``stream`` (bytes from an offset to the end), both retried; the mount reads
through ``source`` instead, whose single tries it retries itself within
each read's deadline.
"""

from __future__ import annotations

import logging
import os
from typing import Any, BinaryIO, Iterator

from .context import RequestContext
from .download import DirectSource, Downloader, Progress
from .drivers.base import Driver
from .errors import ImageBadRequest, ImageConflict, ImagefsError, ImageNotFound
from .ids import is_uuid_like
from .records import DELETED_STATES, SORTABLE, split_info
from .retry import Retrier, RetryPolicy, call_with_retries
from .sources import closing, stream_at
from .sources.service import ServiceSource

log = logging.getLogger(__name__)

_PAGING = {"marker", "limit", "sort_key", "sort_dir", "page_size", "filters"}
CHUNK = 1 << 20


def _chunks(data: Any) -> Iterator[bytes]:
    """Bytes from a file object, a bytes-like object or an iterable of them."""
    if hasattr(data, "read"):
        while chunk := data.read(CHUNK):
            yield chunk
    elif isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
    else:
        for chunk in data:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise ImageBadRequest(f"image data must be bytes, not {type(chunk).__name__}")
            yield bytes(chunk)


class API:
    """Images through ``default`` (a driver), or another driver a URI names."""

    def __init__(self, default: Driver, *others: Driver, retry: RetryPolicy = RetryPolicy(),
                 page_size: int = 100, progress: Progress | None = None,
                 direct: DirectSource | None = None):
        self.default = default
        self.drivers = (default, *others)
        self.retry = retry
        self.page_size = page_size
        self.progress = progress
        self._downloads = Downloader(retry, progress, direct)

    # ---- dispatch ---------------------------------------------------------
    def resolve(self, id_or_uri: str) -> tuple[Driver, str]:
        """(driver, image id) for a UUID or an image URI."""
        if not isinstance(id_or_uri, str) or not id_or_uri:
            raise ImageBadRequest(f"not an image id or URI: {id_or_uri!r}")
        if is_uuid_like(id_or_uri):
            return self.default, id_or_uri
        for driver in self.drivers:
            image_id = driver.parse_uri(id_or_uri)
            if image_id is not None:
                if not is_uuid_like(image_id):
                    raise ImageBadRequest(f"{id_or_uri!r} does not end in an image id")
                return driver, image_id
        if ":" in id_or_uri:
            scheme = id_or_uri.split(":", 1)[0]
            raise ImageBadRequest(
                f"no configured image service handles {id_or_uri!r} (scheme {scheme!r}); "
                "use an image UUID, http(s)://<glance>/v2/images/<id> or imagefs-local:<id>")
        raise ImageBadRequest(f"{id_or_uri!r} is neither an image UUID nor an image URI")

    def _retrying(self, fn, what: str):
        return call_with_retries(fn, self.retry, what)

    # ---- the seed's methods -------------------------------------------------
    def get(self, context: RequestContext, id_or_uri: str, include_locations: bool = False,
            show_deleted: bool = True) -> dict[str, Any]:
        """The image's record.

        ``include_locations=True`` always adds a ``locations`` list (empty when
        the service exposes none).  ``show_deleted=False`` raises
        ``ImageNotFound`` for an image in a deleted state; Glance v2 itself
        never shows deleted images, so there they are not found either way.
        """
        driver, image_id = self.resolve(id_or_uri)
        record = self._retrying(lambda: driver.get(context, image_id, include_locations),
                                f"get image {image_id}")
        if not show_deleted and record["status"] in DELETED_STATES:
            raise ImageNotFound(f"image {image_id} is {record['status']}")
        return record

    def get_all(self, context: RequestContext, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Records of the images visible to the caller, fetched lazily, page by page.

        Keyword arguments: ``filters`` (a dict), or filters given directly
        (``name``, ``status``, ``visibility``, ``disk_format``,
        ``container_format``, ``owner``, ``protected``, any custom property,
        and ``tag``: a list of tags, images having all of them; and
        ``os_hidden``: as Glance, hidden images are listed only with
        ``os_hidden=True``, and then only they); ``marker``
        (start after this image id), ``limit`` (at most this many),
        ``sort_key`` (default ``created_at``), ``sort_dir`` (``asc`` or
        ``desc``, default ``desc``), ``page_size`` (images a request).

        Only ``active`` images are returned unless ``status`` is given
        (``status=None`` lifts the filter).  Which images are visible is the
        service's decision: an admin sees all, others see public images, their
        own project's, and those shared with them.  A listing interrupted by a
        backend failure resumes after the last image it returned.
        """
        filters = dict(kwargs.pop("filters", None) or {})
        paging = {k: kwargs.pop(k) for k in list(kwargs) if k in _PAGING}
        filters.update(kwargs)
        filters.setdefault("status", "active")
        if filters["status"] is None:
            del filters["status"]
        sort_dir = paging.get("sort_dir", "desc")
        if sort_dir not in ("asc", "desc"):
            raise ImageBadRequest(f"sort_dir must be 'asc' or 'desc', not {sort_dir!r}")
        sort_key = paging.get("sort_key", "created_at")
        if sort_key not in SORTABLE:
            raise ImageBadRequest(f"cannot sort by {sort_key!r}")
        limit = paging.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ImageBadRequest(f"limit must be a whole number >= 0, not {limit!r}")
        page_size = paging.get("page_size") or self.page_size
        tags = filters.pop("tag", None)
        tags = [tags] if isinstance(tags, str) else list(tags or ())
        filters = {k: str(v).lower() if isinstance(v, bool) else str(v)
                   for k, v in filters.items()}
        if tags:
            filters["tag"] = tags
        return self._list(context, filters, paging.get("marker"), limit, sort_key, sort_dir,
                          page_size)

    def _list(self, context, filters, marker, limit, sort_key, sort_dir, page_size):
        if limit == 0:
            return

        def open_listing():  # after the last image returned, as many as are still wanted
            return self.default.list(context, filters, marker=marker, limit=limit,
                                     sort_key=sort_key, sort_dir=sort_dir, page_size=page_size)
        retrier = Retrier(self.retry, on_retry=lambda exc, delay: log.info(
            "listing images: %s; resuming after %s in %.2fs", exc, marker, delay))
        for record in retrier.iterate(open_listing):
            yield record
            marker = record["id"]
            if limit is not None:
                limit -= 1
                if limit == 0:
                    return

    def create(self, context: RequestContext, image_info: dict[str, Any],
               data: Any = None) -> dict[str, Any]:
        """Create an image; with ``data`` (file object, bytes or an iterator of
        bytes) upload it too.  Returns the record after the upload (``active``)
        or without one (``queued``).  If the upload fails, the new image is
        deleted again and the error raised.  Never retried: a repeated create
        would make a second image.
        """
        fields, props = split_info(image_info)
        record = self.default.create(context, fields, props)
        if data is None:
            return record
        try:
            self._upload(context, self.default, record["id"], data)
        except BaseException:
            try:
                self.default.delete(context, record["id"])
            except ImagefsError as exc:
                log.warning("could not delete image %s after its upload failed: %s",
                            record["id"], exc)
            raise
        return self.get(context, record["id"])

    def update(self, context: RequestContext, id_or_uri: str, image_info: dict[str, Any],
               data: Any = None, purge_props: bool = False) -> dict[str, Any]:
        """Change an image's fields and custom properties and return the new record.

        Properties in ``image_info`` are set; with ``purge_props=True`` every
        other custom property is removed.  ``tags`` in ``image_info`` is the
        image's new list of tags, as its record carries them (the driver makes
        the change tag by tag where the service has tag calls).  ``data``
        uploads bits to an image that has none (``queued``); for any other
        image it is ``ImageConflict`` and nothing is changed.
        """
        driver, image_id = self.resolve(id_or_uri)
        fields, props = split_info(image_info)
        if data is not None:
            status = self._retrying(lambda: driver.get(context, image_id, False),
                                    f"get image {image_id}")["status"]
            if status != "queued":
                raise ImageConflict(f"image {image_id} is {status}: data can only be uploaded "
                                    "to an image that has none")
        record = None
        if fields or props or purge_props:
            record = driver.update(context, image_id, fields, props, purge_props)
        if data is not None:
            self._upload(context, driver, image_id, data)
            record = None
        if record is None:
            record = self._retrying(lambda: driver.get(context, image_id, False),
                                    f"get image {image_id}")
        return record

    def delete(self, context: RequestContext, id_or_uri: str) -> None:
        """Delete the image and its data; afterwards it is not found."""
        driver, image_id = self.resolve(id_or_uri)
        driver.delete(context, image_id)

    def download(self, context: RequestContext, id_or_uri: str, data: BinaryIO | None = None,
                 dest_path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Write the image's verified bytes to ``data`` or ``dest_path``; returns
        the record.  The whole contract: ``imagefs.download``."""
        driver, image_id = self.resolve(id_or_uri)
        return self._downloads.download(context, driver, image_id, data, dest_path)

    # ---- ranged reads --------------------------------------------------------
    def read(self, context: RequestContext, id_or_uri: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, fewer only where the image ends.

        Retried on backend failures within the policy.  On a store that
        cannot seek, the bytes come from a stream from the start, skipped
        forward.  No hash can be checked for a part of an image, so exactness
        rests on the service's ranges.
        """
        if offset < 0 or length < 0:
            raise ImageBadRequest("offset and length must be >= 0")
        driver, image_id = self.resolve(id_or_uri)

        def once() -> bytes:  # on a store that cannot seek: from the start, skipped
            with closing(stream_at(lambda o, e: driver.open_stream(context, image_id, o, e),
                                   offset, offset + length)) as chunks:
                return b"".join(chunks)
        return self._retrying(once, f"read image {image_id} at {offset}+{length}")

    def stream(self, context: RequestContext, id_or_uri: str, offset: int = 0) -> Iterator[bytes]:
        """The image's bytes from ``offset`` to its end, resuming after a
        dropped connection.  Not verified (it may start mid-image): use
        ``download`` for a verified copy."""
        driver, image_id = self.resolve(id_or_uri)
        return self._downloads.stream(context, driver, image_id, offset)

    def source(self, context: RequestContext, id_or_uri: str) -> ServiceSource:
        """The image's bytes as a ``Source`` (single tries: the mount retries)."""
        driver, image_id = self.resolve(id_or_uri)
        return ServiceSource(driver, context, image_id)

    def _upload(self, context, driver, image_id, data) -> None:
        done = 0

        def counted():
            nonlocal done
            for chunk in _chunks(data):
                done += len(chunk)
                if self.progress:
                    self.progress(image_id, done, None)
                yield chunk
        driver.upload(context, image_id, counted())
