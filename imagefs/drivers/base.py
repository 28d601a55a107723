"""What a driver provides to ``imagefs.api.API``."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Protocol

from ..context import RequestContext

Record = dict[str, Any]


class Driver(Protocol):
    #: short name for logs and URIs ("glance", "local")
    name: str

    def parse_uri(self, uri: str) -> str | None:
        """The image id if ``uri`` names an image of this driver, else None."""

    def get(self, ctx: RequestContext, image_id: str, include_locations: bool) -> Record:
        """The record; ImageNotFound if the caller cannot see it."""

    def list(self, ctx: RequestContext, filters: Mapping[str, Any], *, marker: str | None,
             limit: int | None, sort_key: str, sort_dir: str, page_size: int) -> Iterator[Record]:
        """Records visible to the caller, filtered and sorted, fetched page by page.

        Filter values are strings, but ``tag``: a list (images having all).
        Images with ``os_hidden`` are listed only with ``os_hidden="true"``."""

    def create(self, ctx: RequestContext, fields: Mapping[str, Any],
               props: Mapping[str, str]) -> Record:
        """A new image record without data (status ``queued``)."""

    def upload(self, ctx: RequestContext, image_id: str, chunks: Iterable[bytes]) -> None:
        """Store the image's data; the image becomes ``active``.  Never retried."""

    def update(self, ctx: RequestContext, image_id: str, fields: Mapping[str, Any],
               props: Mapping[str, str], purge_props: bool) -> Record:
        """Change fields and properties; with ``purge_props`` drop the others.

        ``fields['tags']``, when given, is the image's new list of tags: the
        driver works out what to add and remove (Glance: one tag call each,
        so that others' changes to other tags are kept)."""

    def delete(self, ctx: RequestContext, image_id: str) -> None:
        """Delete the image; afterwards it is not found."""

    def open_stream(self, ctx: RequestContext, image_id: str, offset: int,
                    end: int | None = None, timeout: float | None = None) -> Iterator[bytes]:
        """The image's bytes from ``offset`` to ``end`` (exclusive; None: the image's
        end), as they arrive, in one request.

        ``RangesRefused`` if the store cannot start at ``offset`` > 0 or stop
        at ``end``.  May raise ``BackendUnavailable`` part-way; the caller
        resumes from the offset it reached.  ``timeout`` bounds each wait for
        the service (default: the driver's).
        """

    def read(self, ctx: RequestContext, image_id: str, offset: int, length: int,
             timeout: float | None = None) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end).  One try;
        ``RangesRefused`` if the store cannot read at an offset."""
