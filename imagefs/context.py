"""Who is asking: the request context passed to every API call.

A ``RequestContext`` is the first argument of each ``imagefs.api.API`` method,
as ``context`` is in ``nova.image.api``.  It carries identity, never settings:

- ``auth_token``: a token the Glance driver sends as ``X-Auth-Token``;
- ``auth_token_file``: alternatively, the path of a file holding the token;
  the Glance driver reads it at first use and again whenever Glance answers
  401, so the token can be replaced while a mount runs;
- ``session``: alternatively, a keystoneauth ``Session`` with an auth plugin
  (password, application credential, clouds.yaml ...); the Glance driver uses
  it for every request and lets it fetch and refresh tokens;
- ``user_id``, ``project_id``, ``roles``, ``is_admin``: who the caller is.
  Glance works these out from the token itself; the embedded store, which has
  no identity service, uses them to decide visibility: the owner of a new
  image is ``project_id``, an admin sees every image, anyone else sees public
  and community images and their own project's.
- ``request_id``: sent as ``X-Openstack-Request-ID`` to tie logs together.

Contexts are immutable; ``RequestContext.local_admin()`` is the context of
the host's operator on the embedded store.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any


@dataclasses.dataclass(frozen=True)
class RequestContext:
    auth_token: str | None = None
    auth_token_file: str | None = None
    session: Any = None
    user_id: str | None = None
    project_id: str | None = None
    roles: tuple[str, ...] = ()
    is_admin: bool = False
    request_id: str = dataclasses.field(default_factory=lambda: "req-" + str(uuid.uuid4()))

    @classmethod
    def local_admin(cls) -> "RequestContext":
        """The host operator on the embedded store: sees and owns everything."""
        return cls(user_id="local", project_id="local", roles=("admin",), is_admin=True)

    def __repr__(self) -> str:  # never print a token into a log
        token = "***" if self.auth_token else None
        return (f"RequestContext(user_id={self.user_id!r}, project_id={self.project_id!r}, "
                f"roles={self.roles!r}, is_admin={self.is_admin}, auth_token={token}, "
                f"auth_token_file={self.auth_token_file!r}, "
                f"session={'yes' if self.session else None})")
