"""The image record: one plain dict shape for every driver.

``get``, ``get_all``, ``create`` and ``update`` return dicts with exactly the
keys of ``FIELDS`` plus ``properties`` (every custom property, nothing else).
``tags`` and ``stores`` are lists (``stores`` None where the service has no
stores to name), ``os_hidden`` and ``protected`` booleans.

``locations`` and ``direct_url`` are added only when asked for
(``include_locations``): they can hold a store's credentials (swift and http
store URLs do) and say where the bytes live, so they stay out of every record
not asked for them, whatever the service sends; the mount's ``metadata.json``
is made from such records.  Drivers build records with ``make_record``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

FIELDS = ("id", "name", "status", "size", "virtual_size", "disk_format", "container_format",
          "checksum", "os_hash_algo", "os_hash_value", "min_disk", "min_ram", "owner",
          "visibility", "protected", "os_hidden", "tags", "stores", "created_at", "updated_at")

#: Fields a listing can be sorted by (the lists cannot).
SORTABLE = tuple(f for f in FIELDS if f not in ("tags", "stores"))

#: Where an image's bytes are: only in records asked for them.
LOCATION_KEYS = ("locations", "direct_url")

#: Fields a caller may set on create/update (the rest belong to the service).
WRITABLE = ("name", "disk_format", "container_format", "min_disk", "min_ram",
            "visibility", "protected", "os_hidden", "tags")

#: Keys the service adds to an image that are neither FIELDS nor custom properties.
SERVICE_KEYS = frozenset({"file", "schema", "self", "tags", "virtual_size", "direct_url",
                          "locations", "stores", "os_hidden", "properties", "deleted",
                          "deleted_at"})

#: Image states of an image deleted or being deleted: its data cannot be read.
DELETED_STATES = frozenset({"deleted", "pending_delete", "killed"})


def is_custom_property(key: str) -> bool:
    return key not in FIELDS and key not in SERVICE_KEYS and not key.startswith("os_glance_")


def make_record(raw: Mapping[str, Any], include_locations: bool = False,
                locations: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A record from a flat service dict (Glance's JSON, or the store's)."""
    record = {key: raw.get(key) for key in FIELDS}
    record["tags"] = sorted(raw.get("tags") or ())
    record["protected"] = bool(raw.get("protected"))
    record["os_hidden"] = bool(raw.get("os_hidden"))
    stores = raw.get("stores")
    if isinstance(stores, str):  # Glance sends "fs,ceph"
        stores = [s for s in stores.split(",") if s]
    record["stores"] = list(stores) if stores is not None else None
    props = dict(raw.get("properties") or {})
    props.update({k: v for k, v in raw.items() if is_custom_property(k)})
    record["properties"] = props
    if include_locations:
        record["locations"] = [dict(loc) for loc in locations]
        record["direct_url"] = raw.get("direct_url")
    return record


def without_locations(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with ``locations`` and ``direct_url`` taken out, for anything
    others than the caller may read."""
    return {k: v for k, v in record.items() if k not in LOCATION_KEYS}


def split_info(image_info: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a caller's ``image_info`` into (writable fields, custom properties).

    Custom properties may come in ``image_info['properties']`` (Nova's form)
    or at the top level; fields the service owns (id, size, status, checksum
    ...) are refused rather than silently dropped.
    """
    from .errors import ImageBadRequest

    fields: dict[str, Any] = {}
    props: dict[str, Any] = {}
    for key, value in image_info.items():
        if key == "properties":
            if not isinstance(value, Mapping):
                raise ImageBadRequest("'properties' must be a mapping of names to values")
            props.update(value)
        elif key in WRITABLE:
            fields[key] = value
        elif key in FIELDS or key in SERVICE_KEYS or key.startswith("os_glance_"):
            raise ImageBadRequest(f"'{key}' is set by the image service and cannot be given")
        else:
            props[key] = value
    tags = fields.get("tags")
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) and t
                                                             for t in tags)):
        raise ImageBadRequest("'tags' must be a list of non-empty strings")
    for key, value in props.items():
        if not is_custom_property(key):
            raise ImageBadRequest(f"'{key}' is not allowed as a custom property name")
        if not isinstance(value, str):
            raise ImageBadRequest(f"property '{key}' must be a string, not {type(value).__name__}")
    return fields, props


def tags_changed(tags: Iterable[str], add: Iterable[str], remove: Iterable[str]) -> list[str]:
    """A record's ``tags`` with ``add`` added and ``remove`` taken out: the new
    list an ``update`` takes."""
    return sorted((set(tags) | set(add)) - set(remove))
