"""Boot profiles published through the image service, so hosts with no shared
directory share them (``imagefs.profiles`` records and replays them).

A **published profile** is an image of its own, in the mount's project::

    os_hidden=True, visibility=private, tags=[TAG],
    properties: imagefs_profile_of=<image id>, imagefs_profile_version=<version>
    data: the profile's JSON (``Profile.to_json``)

Why an image of its own: the profiled image usually belongs to another project
(a public image, say), which the mount's credentials may not change.  Why the
bytes go in the image's data and not in a property: a profile keeps up to
``MAX_RANGES`` ranges, well over 100 KB of JSON, and a MySQL-backed Glance
keeps property values in a TEXT column (64 KiB); data has no such bound,
and it is checked against its checksum on the way back.  It is hidden so that
image listings (Horizon's, ``openstack image list``, the mounts') do not
show it, and private so that only its project (and admins) see it.

**Finding** (``load``) lists the images with the tag and both properties
(``os_hidden=True``, ``visibility=private``: Glance lists a non-admin only
their own project's private images), reads each and merges them.  A profile
is trusted only if its image is owned by the mount's project (``ctx.project_id``,
else the project keystoneauth names, else the owner Glance gave the mount's
own first published profile; with a bare token before that, Glance's private
listing is the check, which for an admin's token shows every project's), its data is at most ``MAX_PROFILE_BYTES``, it
parses, it names the same image, version and size, its ranges lie inside the
image, and the bytes it would make the mount fetch are at most ``MAX_SHARE``
of the image.  Anything else is ignored with one warning per published
image.  A profile only steers prefetch: the bytes read are still the
source's, checked as ever, so a bad profile can cost fetches, never a byte.
A lookup that found nothing is remembered for ``MISS_TTL`` seconds: lookups
happen only at the open of a ``data`` file, never for a listing.

**Publishing** (``save``) reads every published profile of the image
version, merges the new one into them, creates the merged profile's image,
and only then deletes the images it merged.  Two hosts publishing at once
each create a superset of what they read and delete only what they read, so
both new images survive and the next ``load`` (which merges all it finds)
has both hosts' boots; the next publish folds them into one.  Nothing is
lost; at worst two images live until the next publish.  Credentials that
may not create images turn publishing off for the mount, with one log line;
finding goes on.

Blocking: call from threads, as ``ProfileStore``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

from .errors import (
    ImagefsError,
    ImageNotAuthorized,
    ImageNotFound,
    ImageQuotaExceeded,
)
from .profiles import MAX_SHARE, Profile
from .retry import Retrier, RetryPolicy

log = logging.getLogger(__name__)

TAG = "imagefs-profile"
PROP_OF = "imagefs_profile_of"
PROP_VERSION = "imagefs_profile_version"
#: The largest published profile accepted (``MAX_RANGES`` ranges take a few hundred KB).
MAX_PROFILE_BYTES = 1 << 20
#: Seconds a lookup that found nothing is remembered.
MISS_TTL = 300.0
#: A publish the service failed is tried again, whole (read, merge, create; the
#: images it read are deleted only at its end): three tries in all, about 1 and 2 s apart.
PUBLISH_RETRY = RetryPolicy(base_delay=1.0, max_delay=2.0, deadline=30.0, attempts=3)


class _TooLarge(Exception):
    pass


class _Bounded(io.BytesIO):
    """A file object that refuses more than ``limit`` bytes."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def write(self, chunk) -> int:
        if self.tell() + len(chunk) > self.limit:
            raise _TooLarge()
        return super().write(chunk)


class PublishedProfiles:
    """Profiles as hidden images of the mount's project, through ``api``."""

    def __init__(self, api, ctx, *, publish: bool = True, miss_ttl: float = MISS_TTL,
                 clock=time.monotonic):
        self.api, self.ctx = api, ctx
        self.publishing = publish
        self.miss_ttl, self.clock = miss_ttl, clock
        self.lookups = 0  # listings made by load (for tests and status)
        self._misses: dict[tuple[str, str], float] = {}  # key -> when the miss expires
        self._warned: set[str] = set()
        self._project: str | None = ctx.project_id or _session_project(ctx)
        self._lock = threading.Lock()

    # ---- finding ------------------------------------------------------------
    def load(self, image_id: str, version: str) -> Profile | None:
        """The merge of every trusted published profile of the image version, or
        None (a miss is remembered for ``miss_ttl`` seconds)."""
        key = (image_id, version)
        with self._lock:
            if self._misses.get(key, 0) > self.clock():
                return None
        pairs = self._published(image_id, version)
        log.info("image %s: looked for a published boot profile: %s", image_id,
                 f"{len(pairs)} found" if pairs else
                 f"none (not looked for again for {self.miss_ttl:.0f} s)")
        profile = self._merge(p for _, p in pairs)
        if profile is not None:
            profile.origin = "published " + ",".join(r["id"] for r, _ in pairs)
        else:
            with self._lock:
                self._misses[key] = self.clock() + self.miss_ttl
        return profile

    def find(self, image_id: str | None) -> list[Profile]:
        """The image's (every image's, with None) published profiles, one merged per
        image version; ``origin`` names the profile images."""
        by_version: dict[tuple[str, str], list[tuple[dict, Profile]]] = {}
        for record, p in self._published(image_id, None):
            by_version.setdefault((p.image_id, p.version), []).append((record, p))
        found = []
        for _, pairs in sorted(by_version.items()):
            merged = self._merge(p for _, p in pairs)
            merged.origin = "published " + ",".join(r["id"] for r, _ in pairs)
            found.append(merged)
        return found

    def records(self, image_id: str | None = None, version: str | None = None) -> list[dict]:
        """The records of the published profiles visible to the mount (all images
        when ``image_id`` is None), without reading them."""
        filters: dict[str, Any] = {"tag": [TAG], "os_hidden": True, "visibility": "private"}
        if image_id is not None:
            filters[PROP_OF] = image_id
        if version is not None:
            filters[PROP_VERSION] = version
        return list(self.api.get_all(self.ctx, filters=filters))

    def _published(self, image_id: str | None,
                   version: str | None) -> list[tuple[dict, Profile]]:
        """(record, profile) of each trusted published profile; the others warned of."""
        self.lookups += 1
        try:
            records = self.records(image_id, version)
        except ImagefsError as exc:
            self._warn("lookup", f"cannot look up published boot profiles: {exc}")
            return []
        found = []
        for record in records:
            profile = self._read(record, image_id, version)
            if profile is not None:
                found.append((record, profile))
        return found

    def _read(self, record: dict, image_id: str | None,
              version: str | None) -> Profile | None:
        image_id = image_id or (record.get("properties") or {}).get(PROP_OF)
        why = self._distrust(record)
        if why is None:
            buffer = _Bounded(MAX_PROFILE_BYTES)
            try:
                self.api.download(self.ctx, record["id"], data=buffer)
                profile = Profile.from_json(buffer.getvalue().decode())
            except _TooLarge:
                why = f"its data is over {MAX_PROFILE_BYTES} bytes"
            except ImageNotFound:
                return None  # deleted by a publisher merging it meanwhile: not damage
            except ImagefsError as exc:
                why = f"cannot read it: {exc}"
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                why = f"damaged ({exc})"
            else:
                why = _mismatch(profile, record, image_id, version)
                if why is None:
                    profile.origin = f"published {record['id']}"
                    return profile
        self._warn(record["id"], f"published boot profile {record['id']} (of image "
                                 f"{image_id}) ignored: {why}")
        return None

    def _distrust(self, record: dict) -> str | None:
        """Why the record's profile may not be used, before reading it; None if it may."""
        if record.get("status") != "active":
            return f"it is {record.get('status')}"
        if (record.get("size") or 0) > MAX_PROFILE_BYTES:
            return f"its data is {record['size']} bytes, over {MAX_PROFILE_BYTES}"
        if self._project is not None and record.get("owner") != self._project:
            return f"it belongs to project {record.get('owner')}, not the mount's " \
                   f"({self._project})"
        # With the project unknown (a bare token, before the mount's first publish),
        # Glance's visibility=private listing is the check: a non-admin sees only
        # their own project's private images.
        return None

    @staticmethod
    def _merge(profiles) -> Profile | None:
        merged = None
        for p in profiles:
            origin = p.origin if merged is None else "published"
            merged = p if merged is None else merged.merged(p)
            merged.origin = origin
        return merged

    # ---- publishing ---------------------------------------------------------
    def save(self, profile: Profile) -> Profile:
        """Publish ``profile`` merged with every published one of its image version;
        the merged profile (``profile`` itself when publishing is off)."""
        if not self.publishing:
            return profile
        # Nothing is lost by a try that fails: published ones are deleted last.
        retrier = Retrier(PUBLISH_RETRY, on_retry=lambda exc, delay: log.info(
            "image %s: publishing its boot profile: %s; again in %.1f s", profile.image_id,
            exc, delay))
        return retrier(lambda: self._publish(profile))

    def _publish(self, profile: Profile) -> Profile:
        old = self._published(profile.image_id, profile.version)
        merged = self._merge([profile] + [p for _, p in old])
        info = {"name": f"imagefs-profile-{profile.image_id}", "disk_format": "raw",
                "container_format": "bare", "visibility": "private", "os_hidden": True,
                "tags": [TAG], "properties": {PROP_OF: profile.image_id,
                                              PROP_VERSION: profile.version}}
        try:
            record = self.api.create(self.ctx, info, data=merged.to_json().encode())
        except (ImageNotAuthorized, ImageQuotaExceeded) as exc:
            self.publishing = False
            log.warning("boot profiles will not be published by this mount: its "
                        "credentials cannot create images (%s); published ones are still "
                        "used", exc)
            return merged
        if self._project is None and record.get("owner"):
            self._project = record["owner"]
        for old_record, _ in old:
            self._delete(old_record["id"])
        with self._lock:
            self._misses.pop((profile.image_id, profile.version), None)
        log.info("image %s: boot profile published as image %s (%d ranges, %d boots, "
                 "merging %d published before)", profile.image_id, record["id"],
                 len(merged.ranges), merged.boots, len(old))
        merged.origin = f"published {record['id']}"
        return merged

    def delete(self, image_id: str, version: str | None = None) -> int:
        """Delete the image's published profiles (of one version); how many went."""
        gone = 0
        for record in self.records(image_id, version):
            if self._project is not None and record.get("owner") != self._project:
                continue
            gone += self._delete(record["id"])
        return gone

    def _delete(self, profile_image: str) -> int:
        try:
            self.api.delete(self.ctx, profile_image)
            return 1
        except ImageNotFound:  # another publisher merged it first
            return 0
        except ImagefsError as exc:
            log.warning("cannot delete published boot profile %s: %s", profile_image, exc)
            return 0

    def _warn(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        # the message is the format: each is logged once, and a flood filter that
        # collapses repeats of a format must not fold two profiles' reasons into one
        log.warning(message.replace("%", "%%"))


def _session_project(ctx) -> str | None:
    session = getattr(ctx, "session", None)
    if session is None:
        return None
    try:
        return session.get_project_id()
    except Exception:  # noqa: BLE001 keystoneauth's, any: learnt at the first publish
        return None


def _mismatch(profile: Profile, record: dict, image_id: str, version: str | None) -> str | None:
    """Why a parsed profile does not fit its image, or None."""
    props = record.get("properties") or {}
    if profile.image_id != image_id or props.get(PROP_OF) != image_id:
        return "it is another image's"
    if profile.version != props.get(PROP_VERSION) or \
            (version is not None and profile.version != version):
        return "it is another version's"
    if any(offset + length > profile.size for offset, length, _ in profile.ranges):
        return "its ranges reach past the image's end"
    if profile.bytes > MAX_SHARE * profile.size:
        return f"it would fetch {profile.bytes} bytes, over {MAX_SHARE:.0%} of the image"
    return None


class ProfileStores:
    """The mount's profile store: the local directory (``ProfileStore``) first, then
    the published profiles (None: not looked for).  The same interface as
    ``ProfileStore``, so ``BootProfiles`` does not know which one it has."""

    def __init__(self, local, published: PublishedProfiles | None):
        self.local, self.published = local, published
        self.root = local.root

    def load(self, image_id: str, version: str) -> Profile | None:
        profile = self.local.load(image_id, version)
        if profile is None and self.published is not None:
            profile = self.published.load(image_id, version)
        return profile

    def find(self, image_id: str) -> list[Profile]:
        found = self.local.find(image_id)
        if self.published is not None:
            found += self.published.find(image_id)
        return found

    def save(self, profile: Profile) -> Profile:
        """Merge into the local profile; publish the new recording (the published
        one then has each host's boots once)."""
        saved = self.local.save(profile)
        if self.published is not None:
            try:
                self.published.save(profile)
            except ImagefsError as exc:
                log.warning("image %s: cannot publish its boot profile: %s",
                            profile.image_id, exc)
        return saved

    @property
    def publishes(self) -> bool:
        return self.published is not None and self.published.publishing
