"""The exceptions of imagefs, in one tree.

Every layer raises these; nothing above the drivers ever sees an exception of
glanceclient, keystoneauth or requests.  Each driver translates its library's
errors at one place (``imagefs.drivers.glance._translate``).

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
     └── BackendUnavailable         connection failures, timeouts and 5xx, after bounded retries

The mount maps them to errno in one table (``imagefs.fuse_ops``):
ImageNotFound → ENOENT, ImageNoData → ESTALE, everything else → EIO.
"""

from __future__ import annotations


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


class BackendUnavailable(ImagefsError):
    """The service could not be reached or kept failing; retries are exhausted."""
