"""imagefs: OpenStack images as files, fetched lazily through a block cache.

The layers, top to bottom; a module imports only its own layer and those
below it, and nothing imports in a cycle (``scripts/layers.py`` checks both
and prints the real graph)::

    cli, fstab, __main__          entry points: arguments, logging, exit codes
    commands/, mount, daemon,     the commands, and the daemon's side of their
      cachectl, prewarm,            control requests
      profilectl, status
    connect, control, output,     what the commands share: the service from options,
      progress, notify, ...         the control socket, rendering
    fuse_ops                      the pyfuse3 adapter: every error to an errno
    fs, handles, listing,         the namespace, attributes, reads; open files and
      inodes, times, names          their readahead; the listing and records with
                                    their TTLs; inode numbers from image ids;
                                    utime on data files; names for by-name/
    profiles, profiles_published, the data path: boot profiles (local and
      prefetch, blocks, streams     published), readahead, single fetches, streams
    cache/                        the memory and disk tiers
    api, download                 the seed's image API; the download contract
    sources/                      where bytes come from: the service, rbd, file://,
                                    and the chooser between them
    drivers/                      Glance and the embedded store
    errors, retry, records,       foundations: the exception tree, retry runners,
      context, ids, atomic,         records, request contexts, image ids,
      config, metrics               whole-file writes, settings, counters

``imagefs.api.API`` is the image API (``create``, ``delete``, ``download``,
``get``, ``get_all``, ``update`` as in ``nova.image.api``, plus ranged
``read`` and ``stream``).
"""

__version__ = "0.1.0"

from .api import API  # noqa: E402
from .context import RequestContext  # noqa: E402
from .errors import ImagefsError  # noqa: E402

__all__ = ["API", "RequestContext", "ImagefsError", "__version__"]
