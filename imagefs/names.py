"""Image names as file names: ``MOUNT/by-name/<name>`` is a symlink to ``../<id>``.

Glance's names are free text and need not be unique.  ``safe_name`` makes
one a single path component that can never leave its directory: ``%``,
``/`` and NUL are %-escaped (``%25``, ``%2F``, ``%00``), ``.`` and ``..``
become ``%2E`` and ``%2E%2E``, and a name over 255 bytes is cut, with a hash
of the whole name after a ``~``.  Where names repeat, the newest image
(``created_at``, then id) has the name; the others stay reachable by id.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

MAX_NAME = 255  # bytes in one path component (NAME_MAX)


def safe_name(name: str | None) -> str | None:
    """The file name for an image name; None for an empty or missing name."""
    if not name:
        return None
    text = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if text in (".", ".."):
        text = text.replace(".", "%2E")
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        cut = raw[:MAX_NAME - 17].decode("utf-8", "ignore")  # never half a character
        text = f"{cut}~{digest}"
    return text


def by_name(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``file name -> image id``, the newest image for a name that repeats."""
    best: dict[str, tuple[str, str]] = {}
    for record in records:
        name = safe_name(record.get("name"))
        if name is None:
            continue
        rank = (record.get("created_at") or "", record["id"])
        if name not in best or rank > best[name]:
            best[name] = rank
    return {name: rank[1] for name, rank in best.items()}
