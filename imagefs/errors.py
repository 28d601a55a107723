"""The exceptions of imagefs, in one tree.

Every layer raises these; nothing above the drivers ever sees an exception of
glanceclient, keystoneauth or requests.  Each driver translates its library's
errors at one place (``imagefs.drivers.glance._translate``).  ``FsError`` is
the filesystem's own answer, an errno, and stands apart from the tree: it is
never an image service's error.

::

    ImagefsError                    anything imagefs raises on purpose
     ├── ConfigError                bad settings or arguments (the operator's fault)
     ├── ImageError                 the service refused a request about images
     │    ├── ImageNotFound         404, or deleted when deleted images are hidden
     │    ├── ImageNotAuthorized    401/403: bad credentials or not allowed
     │    │    └── ImageProtected   403 to a delete: the image is protected
     │    ├── ImageBadRequest       400, or a request we can tell is bad (unknown URI scheme)
     │    │    └── RangesRefused    400 to a Range request: the image's store cannot seek
     │    ├── ImageConflict         409: e.g. uploading data to an image that has some
     │    ├── ImageQuotaExceeded    413: quota or size cap
     │    └── ImageNoData           the image has no data to read (queued, or deleted since)
     ├── ImageChecksumMismatch      downloaded bytes do not match the image's hash
     ├── Unusable                   a direct source cannot serve this image: read it
     │                              through the image service instead (``imagefs.sources``)
     └── BackendUnavailable         connection failures, timeouts and 5xx: what a retry may cure

    FsError                         an errno the filesystem answers on its own account
                                    (ENOENT for a name that is not there, EROFS ...)

The mount maps them to errno in one table (``imagefs.fuse_ops``):
FsError → its errno, ImageNotFound → ENOENT (ESTALE for a read of an open
file), ImageNoData → ESTALE, ImageNotAuthorized → EACCES, everything else → EIO.
"""

from __future__ import annotations

import errno


class ImagefsError(Exception):
    """Base class of every error imagefs raises on purpose."""


class ConfigError(ImagefsError):
    """Settings or arguments are wrong; the message says which and how."""


class ImageError(ImagefsError):
    """The image service refused a request.  ``status`` is the HTTP code, if any."""

    status: int | None = None

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class ImageNotFound(ImageError):
    status = 404


class ImageNotAuthorized(ImageError):
    status = 403


class ImageProtected(ImageNotAuthorized):
    """The image is protected: it cannot be deleted until it is unprotected."""


class ImageBadRequest(ImageError):
    status = 400


class RangesRefused(ImageBadRequest):
    """The image's store cannot read at an offset (Glance on rbd, swift, s3, http):
    only a read from the start works.  Drivers raise it; callers decide what to do."""


class ImageConflict(ImageError):
    status = 409


class ImageQuotaExceeded(ImageError):
    status = 413


class ImageNoData(ImageError):
    """The image exists but has no data to read (status ``queued``, or gone)."""


class ImageChecksumMismatch(ImagefsError):
    """Downloaded bytes did not match the image's recorded hash."""


class Unusable(ImagefsError):
    """A direct source cannot serve this image (the message says why): read it
    through the image service instead."""


class BackendUnavailable(ImagefsError):
    """The service or a store could not be reached, timed out or answered 5xx.

    Drivers and sources raise it for one try; whoever retries (``imagefs.retry``)
    raises it again when its policy gives up."""


class FsError(Exception):
    """An errno the filesystem answers on its own account."""

    def __init__(self, errno_: int, message: str = ""):
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_
