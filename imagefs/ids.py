"""Image ids: what an image UUID looks like, checked in one place.

Images are named by UUIDs.  Everywhere imagefs itself names an image (the
mount's directories, the cache, prefetch requests, the embedded store's
files) the id is in its canonical form, lowercase with dashes, as services
hand them out: ``is_image_id``.

What a user types is looser, the way Glance takes it (oslo's
``is_uuid_like``): any case, dashes optional.  ``is_uuid_like`` is that
check, for the places that pass a typed id on to the service as given (the
API's dispatch and the CLI telling an id from a name); the service decides
whether such an id names an image.
"""

from __future__ import annotations

import re

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LIKE = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}",
                   re.IGNORECASE)


def is_image_id(text: object) -> bool:
    """Whether ``text`` is an image id in canonical form (lowercase, dashed)."""
    return isinstance(text, str) and _CANONICAL.fullmatch(text) is not None


def is_uuid_like(text: object) -> bool:
    """Whether ``text`` is a UUID as a user may type it: any case, dashes optional."""
    return isinstance(text, str) and _LIKE.fullmatch(text) is not None
