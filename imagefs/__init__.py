"""imagefs: OpenStack images as files, fetched lazily through a block cache.

The layers, each importing only those below it::

    cli → mount → fuse_ops → fs → (cache, prefetch, api) → drivers → errors, context

``imagefs.api.API`` is the image API (``create``, ``delete``, ``download``,
``get``, ``get_all``, ``update`` as in ``nova.image.api``, plus ranged
``read`` and ``stream``).
"""

__version__ = "0.1.0"

from .api import API  # noqa: E402
from .context import RequestContext  # noqa: E402
from .errors import ImagefsError  # noqa: E402

__all__ = ["API", "RequestContext", "ImagefsError", "__version__"]
