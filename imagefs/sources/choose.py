"""Which source serves an image: direct from its store where its location allows
(``--direct``), else the image service.

For each open image, ``SourceChooser.open`` asks the service for the
image's locations (``direct_url`` and ``locations``) and tries, in their
order, those whose scheme ``--direct`` allows: ``rbd`` (the default) and
``file`` (opt-in).  A direct source that is ``Unusable`` (no bindings, no
Ceph conf, another cluster, access denied, the snapshot gone, a file that
is not the image's) is passed over, and the image is read through the
service; the reason is logged once per image.  A direct source that turns
``Unusable`` later, on a read, is replaced by the service's for good, also
with one log line.  So a read that the service could serve never fails
because of the direct path.

Glance still answers every metadata call and decides visibility: the
locations are asked for with the reader's own credentials.

The chooser is given, at construction, the two things it needs from the
image service as callables (the service's source for an image, and the
image's locations), bound to the reader's credentials by whoever builds it
(``imagefs.connect.open_chooser``): so ``sources`` never imports the API
above it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Iterator

from ..context import RequestContext
from ..errors import ConfigError, ImagefsError, Unusable
from . import DIRECT_KINDS, FILE, RBD, Source
from .file import FileSource
from .rbd import CephOptions, RbdCluster, RbdLocation, available

log = logging.getLogger(__name__)

SCHEMES = (RBD, FILE)

#: service(image_id): the image service's source for the image.
ServiceOpener = Callable[[str], Source]
#: locations(image_id): the image's ``locations`` (Glance's list of ``{"url": ...}``);
#: any ``ImagefsError`` means the service is read instead.
Locations = Callable[[str], "list[dict[str, Any]]"]


@dataclasses.dataclass(frozen=True)
class DirectOptions:
    schemes: frozenset[str] = frozenset({RBD})   # --direct
    ceph: CephOptions = CephOptions()

    @staticmethod
    def parse_schemes(text: str) -> frozenset[str]:
        """``--direct``: a comma-separated list of ``rbd``, ``file``, or ``none``."""
        names = {s.strip() for s in text.split(",") if s.strip()}
        if names == {"none"}:
            return frozenset()
        unknown = names - set(SCHEMES)
        if unknown or not names:
            raise ConfigError(f"--direct takes {', '.join(SCHEMES)} or none (comma-separated), "
                              f"not {text!r}")
        return frozenset(names)


class _Fallback:
    """A direct source that gives way to the service's when it turns ``Unusable``."""

    def __init__(self, image_id: str, direct: Source, service: Source):
        self.image_id = image_id
        self._direct, self._service = direct, service
        self._lock = threading.Lock()
        self._current: Source = direct

    @property
    def kind(self) -> str:
        return self._current.kind

    def _give_way(self, exc: Unusable) -> Source:
        with self._lock:
            if self._current is self._direct:
                log.warning("image %s: %s; reading through the image service from now on",
                            self.image_id, exc)
                self._current = self._service
                self._direct.close()
        return self._service

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        source = self._current
        try:
            return source.read(offset, length, timeout)
        except Unusable as exc:
            if source is self._service:
                raise
            return self._give_way(exc).read(offset, length, timeout)

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        source = self._current
        if source is self._service:
            return source.stream(offset, end, timeout)
        return self._direct_stream(offset, end, timeout)

    def _direct_stream(self, offset, end, timeout) -> Iterator[bytes]:
        try:
            for chunk in self._direct.stream(offset, end, timeout):
                offset += len(chunk)
                yield chunk
        except Unusable as exc:
            yield from self._give_way(exc).stream(offset, end, timeout)

    def close(self) -> None:
        self._direct.close()
        self._service.close()


class SourceChooser:
    def __init__(self, service: ServiceOpener, locations: Locations, options: DirectOptions):
        self.service, self.locations, self.options = service, locations, options
        self._cluster = RbdCluster(options.ceph) if RBD in options.schemes else None

    def warns(self) -> bool:
        """Whether the direct path is off though this host looks meant for it: a
        Ceph conf exists, the bindings do not."""
        return RBD in self.options.schemes and not available() and \
            bool(self.options.ceph.conf)

    def describe(self) -> str:
        """One line on the direct path, for the mount's log."""
        if not self.options.schemes:
            return "direct reads off (--direct none)"
        parts = []
        if RBD in self.options.schemes:
            ceph = self.options.ceph
            if not available():
                parts.append("rbd off: the Ceph bindings (python3-rbd, python3-rados) are "
                             "not installed" + (f", though {ceph.conf} exists" if ceph.conf
                                                else ""))
            elif not ceph.conf:
                parts.append("rbd off: no Ceph configuration")
            else:
                parts.append(f"rbd through {ceph.conf} as client.{ceph.user}")
        if FILE in self.options.schemes:
            parts.append("file:// locations read directly")
        return "; ".join(parts)

    def connect(self) -> None:
        """Connect to the Ceph cluster ahead of the first read (blocking), when
        ``rbd`` locations may be read directly."""
        if self._cluster is not None and available() and self.options.ceph.conf:
            self._cluster.connect()

    def open(self, image_id: str, size: int, direct: bool = True) -> Source:
        """The source for an image (blocking: it may ask the service and Ceph);
        with ``direct`` False, the service's."""
        service = self.service(image_id)
        if not self.options.schemes or not direct:
            return service
        try:
            locations = self.locations(image_id)
        except ImagefsError as exc:
            log.warning("image %s: cannot get its locations (%s); reading through the "
                        "image service", image_id, exc)
            return service
        reasons = []
        for location in locations or []:
            url = location.get("url") or ""
            scheme = url.partition(":")[0]
            if scheme not in self.options.schemes:
                continue
            try:
                direct = self._open_direct(url, size)
            except Unusable as exc:
                reasons.append(str(exc))
                continue
            log.info("image %s: reading directly from %s", image_id, direct)
            return _Fallback(image_id, direct, service)
        if reasons:
            log.warning("image %s: reading through the image service: %s", image_id,
                        "; ".join(reasons))
        return service

    def open_direct(self, ctx: RequestContext, image_id: str, size: int) -> Source | None:
        """A direct source for the image, or None (``API``'s ``direct`` hook, for
        downloads; ``ctx`` must be the one the chooser's callables are bound to)."""
        source = self.open(image_id, size)
        if source.kind in DIRECT_KINDS:
            return source
        source.close()
        return None

    def _open_direct(self, url: str, size: int) -> Source:
        if url.startswith("rbd://"):
            location = RbdLocation.parse(url)
            if location is None:
                raise Unusable(f"{url!r} is not rbd://FSID/POOL/IMAGE/SNAP")
            return self._cluster.open(location, size)
        return FileSource.open(url, size)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
