"""Shared fixtures: a real Glance for the session, and both drivers behind one API.

Contexts carry both a token (for Glance, which works out the identity from
it through the test wrapper) and the same identity spelled out (for the
embedded store, which has no identity service).

``ceph`` (a throw-away Ceph cluster) and ``glance_rbd`` (a second Glance,
whose store is RBD on that cluster) are started by the first test that asks
for them, so a run without such tests pays nothing for them.  Without the
Ceph programs or the rados/rbd bindings those tests skip, unless
``IMAGEFS_REQUIRE_CEPH`` is set (as ``scripts/test`` does, after
``scripts/setup`` installed them): then they fail.

``keystone`` and ``glance_ks`` are a real Keystone and a second Glance that
validates tokens with it (keystonemiddleware), in its catalog as the
``image`` service.  Like every session fixture they start on first use only,
so tests that do not ask for them do not wait for them.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ceph_cluster import CephCluster, missing_binaries  # noqa: E402
from glance_server import ADMIN_PROJECT, PROJECT_A, PROJECT_B, GlanceServer  # noqa: E402
from keystone_server import KeystoneServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.context import RequestContext  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402
from imagefs.drivers.local import LocalDriver  # noqa: E402
from imagefs.retry import RetryPolicy  # noqa: E402

ADMIN = RequestContext(auth_token="admin-token", user_id="admin-user", project_id=ADMIN_PROJECT,
                       roles=("admin", "member", "reader"), is_admin=True)
ALICE = RequestContext(auth_token="alice-token", user_id="alice", project_id=PROJECT_A,
                       roles=("member", "reader"))
BOB = RequestContext(auth_token="bob-token", user_id="bob", project_id=PROJECT_B,
                     roles=("member", "reader"))

#: Fast retries, so that failure tests take well under a second.
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, deadline=5.0)


@pytest.fixture(scope="session")
def glance(tmp_path_factory):
    server = GlanceServer(tmp_path_factory.mktemp("glance"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def glance_locations(tmp_path_factory):
    """A second Glance that puts ``direct_url`` in every answer about an image and
    ``locations`` in those to callers its policy allows (see ``LOCATIONS_CONF``)."""
    server = GlanceServer(tmp_path_factory.mktemp("glance-locations"), show_locations=True)
    server.start()
    yield server
    server.stop()


def glance_behind(keystone: KeystoneServer, workdir: Path) -> GlanceServer:
    """A Glance started behind ``keystone``, its ``image`` service in the catalog."""
    server = GlanceServer(workdir, keystone=keystone).start()
    keystone.register_endpoint("image", "glance", server.url)
    return server


@pytest.fixture(scope="session")
def keystone(tmp_path_factory):
    """A real Keystone whose tokens live an hour."""
    server = KeystoneServer(tmp_path_factory.mktemp("keystone")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def glance_ks(keystone, tmp_path_factory):
    """A Glance behind keystonemiddleware with ``keystone``, in its catalog."""
    server = glance_behind(keystone, tmp_path_factory.mktemp("glance-ks"))
    yield server
    server.stop()


@pytest.fixture
def glance_clean(glance):
    """The Glance server with counters zeroed and no faults, before and after."""
    glance.reset()
    yield glance
    glance.reset()


def _ceph_missing() -> str | None:
    """Why this machine cannot run the Ceph tests, or None if it can."""
    missing = missing_binaries()
    if missing:
        return f"Ceph programs missing: {' '.join(missing)} (scripts/setup installs them)"
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError as exc:
        return f"the rados/rbd bindings do not import in {sys.executable}: {exc} " \
               "(scripts/setup links Debian's into .venv)"
    return None


@pytest.fixture(scope="session")
def ceph():
    """A single-node Ceph cluster with the pool ``images`` (see ceph_cluster.py)."""
    reason = _ceph_missing()
    if reason:
        if os.environ.get("IMAGEFS_REQUIRE_CEPH"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = CephCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def glance_rbd(tmp_path_factory, ceph):
    """A second Glance, whose store is RBD on ``ceph``."""
    server = GlanceServer(tmp_path_factory.mktemp("glance-rbd"), rbd=ceph)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def glance_rbd_clean(glance_rbd):
    """The RBD Glance with counters zeroed and no faults, before and after."""
    glance_rbd.reset()
    yield glance_rbd
    glance_rbd.reset()


class Backend:
    """One driver under test, with what the tests need to know about it."""

    def __init__(self, kind: str, driver, server: GlanceServer | None, root: Path | None):
        self.kind, self.driver, self.server, self.root = kind, driver, server, root
        self.api = API(driver, retry=FAST_RETRY, page_size=3)

    def data_path(self, image_id: str) -> Path:
        """Where the service keeps the image's bytes (to corrupt them in tests)."""
        if self.kind == "local":
            return self.root / "images" / f"{image_id}.data"
        return self.server.dir / "images" / image_id

    def uri(self, image_id: str) -> str:
        if self.kind == "local":
            return f"imagefs-local:{image_id}"
        return f"{self.server.url}/v2/images/{image_id}"


@pytest.fixture(params=["local", "glance"])
def backend(request, tmp_path):
    if request.param == "local":
        yield Backend("local", LocalDriver(tmp_path / "store"), None, tmp_path / "store")
    else:
        server = request.getfixturevalue("glance_clean")
        yield Backend("glance", GlanceDriver(server.url, timeout=10), server, None)


@pytest.fixture
def tag():
    """A property value unique to the test, to find its own images in a shared Glance."""
    return uuid.uuid4().hex


def make_image(api, ctx, tag, data=b"imagefs test bytes", **info):
    info.setdefault("name", f"img-{tag[:8]}")
    info.setdefault("disk_format", "raw")
    info.setdefault("container_format", "bare")
    info.setdefault("properties", {})["test_tag"] = tag
    return api.create(ctx, info, data=data)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
