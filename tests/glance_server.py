"""A real Glance API server on loopback, for tests and benchmarks.

``GlanceServer`` writes a ``glance-api.conf`` (sqlite database, one store)
into a directory, runs ``glance-manage db_sync`` and starts this module as a
subprocess that serves ``glance.wsgi.api:application`` under cheroot.  The
store is ``fs`` (a directory beside the configuration) or, given a started
``ceph_cluster.CephCluster``, ``rbd``: images in its pool ``images`` as
``client.glance``, each with a ``direct_url`` of ``rbd://<fsid>/images/<id>/snap``
(as a Nova host reading RBD directly would see).  An rbd Glance answers 400
to a Range request by itself, as production ones do.

Glance's paste pipeline here uses the ``context`` filter, which trusts the
keystone-style identity headers (``X-Identity-Status``, ``X-Project-Id``,
``X-Roles`` ...).  The ``IdentityWrapper`` in front of it plays the part of
keystonemiddleware: it maps the test tokens in ``TOKENS`` to users, projects
and roles, strips identity headers a client might forge, and answers 401 to
any other token.  So every visibility and permission decision in the tests is
made by Glance itself.

The wrapper also gives tests a control channel (``/_test/...``, not part of
Glance's API):

- ``GET /_test/stats``: bytes of image data sent (the bodies of ``GET .../file``
  answered 2xx; in all, and by image id in ``data_bytes_by_image``) and the
  number of requests, by kind;
- ``POST /_test/reset``: zero the counters and clear faults;
- ``POST /_test/faults`` with a JSON object: ``refuse_ranges`` (answer 400 to
  any Range request, as Glance does for rbd/swift/s3/http stores),
  ``drop_after`` (close data responses after that many bytes, ``drop_count``
  times), ``fail_count`` (answer ``fail_status``, default 503, to that many
  requests), ``down`` (answer 503 to everything until cleared), ``delay``
  (seconds before each data response: a stall, which ends early when the
  faults are changed or reset), ``rate`` (bytes per second: one link that
  all data responses share, as a host's share of a network; it applies to
  responses already under way too);
- ``POST /_test/tokens`` with a JSON object: ``add`` maps new tokens to an
  existing token whose identity they share, ``revoke`` lists tokens that from
  then on answer 401.  ``/_test/reset`` restores ``TOKENS``.

``stats`` also counts the requests answered 401 (``unauthorized``).

``GlanceServer(dir, keystone=server)`` is a Glance behind keystonemiddleware
instead: the ``glance-api-keystone`` pipeline of ``KEYSTONE_PASTE_INI``
(``flavor = keystone``) validates every token with that ``KeystoneServer``
(see ``KeystoneServer.authtoken_config``).  The wrapper still counts and
injects faults, but maps no token: ``/_test/tokens`` has no effect, and
``unauthorized`` counts the 401 answers of keystonemiddleware.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ADMIN_PROJECT = "a0000000000000000000000000000000"
PROJECT_A = "a1111111111111111111111111111111"
PROJECT_B = "b2222222222222222222222222222222"

#: token -> (user id, project id, roles)
TOKENS = {
    "admin-token": ("admin-user", ADMIN_PROJECT, ["admin", "member", "reader"]),
    "alice-token": ("alice", PROJECT_A, ["member", "reader"]),
    "bob-token": ("bob", PROJECT_B, ["member", "reader"]),
}

PASTE_INI = """\
[pipeline:glance-api]
pipeline = versionnegotiation context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory
"""

#: Appended to ``PASTE_INI`` for a Glance behind keystonemiddleware.
KEYSTONE_PASTE_INI = """
[pipeline:glance-api-keystone]
pipeline = versionnegotiation authtoken context rootapp

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
"""

API_CONF = """\
[DEFAULT]
enabled_backends = {store}:{store_type}
worker_self_reference_url = {url}
show_multiple_locations = false
log_file = {dir}/glance-api.log
debug = false
{default_extra}
[database]
connection = sqlite:///{dir}/glance.sqlite

[glance_store]
default_backend = {store}

{store_section}
[os_glance_staging_store]
filesystem_store_datadir = {dir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {dir}/tasks

[paste_deploy]
config_file = {dir}/glance-api-paste.ini

[oslo_policy]
enforce_scope = false
enforce_new_defaults = true

[wsgi]
task_pool_threads = 4
"""

#: Every answer about an image has its ``direct_url`` (an rbd Glance always; an
#: fs one with ``show_locations``, which also turns on ``locations`` for those
#: Glance's policy lets see them: admins and readers of the owning project).
#: A deployment's swift or http store URLs, credentials and all, show like this.
LOCATIONS_CONF = "show_image_direct_url = true\n"

FS_STORE = """\
[fs]
filesystem_store_datadir = {dir}/images
"""

#: rados_connect_timeout also bounds each RADOS operation, so that a request
#: to a Glance whose cluster is gone fails instead of hanging.
RBD_STORE = """\
[rbd]
rbd_store_pool = {pool}
rbd_store_user = glance
rbd_store_ceph_conf = {ceph_conf}
rbd_store_chunk_size = 4
rados_connect_timeout = 30
"""

_IDENTITY_HEADERS = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_USER_ID", "HTTP_X_PROJECT_ID",
                     "HTTP_X_TENANT_ID", "HTTP_X_ROLES", "HTTP_X_ROLE", "HTTP_X_USER_NAME",
                     "HTTP_X_PROJECT_NAME", "HTTP_X_SERVICE_CATALOG", "HTTP_X_DOMAIN_ID",
                     "HTTP_X_USER_DOMAIN_ID", "HTTP_X_PROJECT_DOMAIN_ID", "HTTP_X_IS_ADMIN_PROJECT")


class IdentityWrapper:
    """WSGI middleware: token -> identity headers, byte counting, faults.

    With ``maps_tokens`` false, tokens pass through untouched to the app
    (keystonemiddleware), and its 401 answers are counted.
    """

    def __init__(self, app, maps_tokens: bool = True):
        self.app = app
        self.maps_tokens = maps_tokens
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.stats = {"data_bytes": 0, "data_requests": 0, "range_requests": 0,
                          "data_bytes_by_image": {}, "requests": 0, "list_requests": 0, "get_requests": 0,
                          "unauthorized": 0}
            self._set_faults({})
            self.link_free_at = 0.0  # when the ``rate`` link has sent what it was given
            self.tokens = dict(TOKENS)

    def _set_faults(self, faults):
        """Under the lock.  Requests delayed by the faults before are let go now."""
        self.faults = faults
        old = getattr(self, "cleared", None)
        self.cleared = threading.Event()
        if old is not None:
            old.set()

    def _simple(self, start_response, status, body):
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data)))])
        return [data]

    def _error(self, start_response, code, title, message):
        # The shape keystonemiddleware and Glance use for errors.
        return self._simple(start_response, f"{code} {title}",
                            {"error": {"code": code, "title": title, "message": message}})

    def _counting_refusals(self, start_response):
        def start(status, headers, exc_info=None):
            if status.startswith("401"):
                with self.lock:
                    self.stats["unauthorized"] += 1
            return start_response(status, headers, exc_info)
        return start

    def _control(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/_test/stats":
            with self.lock:
                by_image = dict(self.stats["data_bytes_by_image"])
                return self._simple(start_response, "200 OK",
                                    {**self.stats, "data_bytes_by_image": by_image})
        if path == "/_test/reset":
            self.reset()
            return self._simple(start_response, "200 OK", {})
        if path == "/_test/faults":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            faults = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with self.lock:
                self._set_faults(faults)
            return self._simple(start_response, "200 OK", faults)
        if path == "/_test/tokens":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            change = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with self.lock:
                for new, like in change.get("add", {}).items():
                    self.tokens[new] = self.tokens[like]
                for token in change.get("revoke", []):
                    self.tokens.pop(token, None)
                return self._simple(start_response, "200 OK", sorted(self.tokens))
        return self._simple(start_response, "404 Not Found", {})

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_test/"):
            return self._control(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        is_data = path.endswith("/file") and method == "GET"
        with self.lock:
            faults, cleared = dict(self.faults), self.cleared
            self.stats["requests"] += 1
            if method == "GET" and path.rstrip("/") == "/v2/images":
                self.stats["list_requests"] += 1
            elif method == "GET" and path.startswith("/v2/images/") and not is_data:
                self.stats["get_requests"] += 1
            if is_data:
                self.stats["data_requests"] += 1
                if environ.get("HTTP_RANGE"):
                    self.stats["range_requests"] += 1
            failing = faults.get("fail_count", 0) > 0
            if failing:
                self.faults["fail_count"] -= 1
        if faults.get("down") or failing:
            status = faults.get("fail_status", 503) if failing else 503
            return self._error(start_response, status, "Injected", f"injected failure {status}")
        if is_data and faults.get("refuse_ranges") and environ.get("HTTP_RANGE"):
            return self._error(start_response, 400, "Bad Request",
                               "Range requests are not supported by this store")

        if not self.maps_tokens:  # keystonemiddleware, behind this wrapper, decides
            start_response = self._counting_refusals(start_response)
        for key in _IDENTITY_HEADERS:
            environ.pop(key, None)
        token = environ.pop("HTTP_X_AUTH_TOKEN", None) if self.maps_tokens else None
        if token is not None:
            with self.lock:
                identity = self.tokens.get(token)
                if identity is None:
                    self.stats["unauthorized"] += 1
            if identity is None:
                return self._error(start_response, 401, "Unauthorized",
                                   "The request you have made requires authentication.")
            user, project, roles = identity
            environ.update({"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_USER_ID": user,
                            "HTTP_X_PROJECT_ID": project, "HTTP_X_ROLES": ",".join(roles)})
        if not is_data:
            return self.app(environ, start_response)
        if faults.get("delay"):
            cleared.wait(faults["delay"])  # a stall, until it passes or the faults change
        status = []

        def recording(code, headers, *exc_info):
            status.append(code)
            return start_response(code, headers, *exc_info)
        return self._count(self.app(environ, recording), faults, status, path.split("/")[3])

    def _pace(self, n: int):
        """Sleep until ``n`` more bytes have crossed the ``rate`` link (none set: return).

        A token bucket: each chunk, of whichever response, leaves after the
        ones before it, at ``rate``; an idle link saves up ``_BURST`` bytes of
        credit at most (without any, the time Glance takes to make the next
        chunk would be lost to the link).
        """
        with self.lock:
            rate = self.faults.get("rate")
            if not rate:
                return
            now = time.monotonic()
            self.link_free_at = max(self.link_free_at, now - _BURST / rate) + n / rate
            wait = self.link_free_at - now
        if wait > 0:
            time.sleep(wait)

    def _count(self, body, faults, status, image_id: str):
        """Pass ``body`` on at the link's ``rate``, counting it as data only if it is
        image data (2xx): an error's body is not."""
        drop_after = None
        if faults.get("drop_after") is not None and faults.get("drop_count", 1) > 0:
            drop_after = faults["drop_after"]
            with self.lock:
                self.faults["drop_count"] = faults.get("drop_count", 1) - 1
        sent = 0
        try:
            for chunk in _pieces(body):
                if not status or not status[0].startswith("2"):
                    yield chunk
                    continue
                self._pace(len(chunk))
                if drop_after is not None and sent + len(chunk) > drop_after:
                    chunk = chunk[: drop_after - sent]
                    with self.lock:
                        self.stats["data_bytes"] += len(chunk)
                    yield chunk
                    # Closing the socket mid-body is what a dropped connection
                    # looks like to the client.
                    raise ConnectionAbortedError("injected connection drop")
                sent += len(chunk)
                with self.lock:
                    self.stats["data_bytes"] += len(chunk)
                    by_image = self.stats["data_bytes_by_image"]
                    by_image[image_id] = by_image.get(image_id, 0) + len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()


_PIECE = 64 << 10  # bytes: the longest chunk ``rate`` lets go at once
_BURST = 4 * _PIECE


def _pieces(body, size: int = _PIECE):
    """The chunks of ``body``, none longer than ``size`` (so that a ``rate`` is smooth)."""
    for chunk in body:
        for start in range(0, len(chunk), size):
            yield chunk[start:start + size] if len(chunk) > size else chunk


def stop_group(proc: subprocess.Popen | None) -> None:
    """End a server started in a process group of its own: TERM, then KILL after 10 s."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GlanceServer:
    """A Glance API subprocess on 127.0.0.1; use as a context manager.

    With ``rbd`` (a started ``CephCluster``) its store is that cluster's pool
    ``images``, which must outlive the server; otherwise a directory.  With
    ``keystone`` (a ``KeystoneServer``, started), Glance validates tokens with
    it through keystonemiddleware, as a service user made for it there.
    """

    def __init__(self, workdir: Path, port: int | None = None, keystone=None, *, rbd=None,
                 show_locations: bool = False):
        self.dir = Path(workdir)
        self.show_locations = show_locations
        self.keystone = keystone
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rbd = rbd
        self.proc: subprocess.Popen | None = None

    def _api_conf(self) -> str:
        conf = self._store_conf()
        if self.show_locations:
            conf = conf.replace("show_multiple_locations = false", "show_multiple_locations = true")
        return conf

    def _store_conf(self) -> str:
        if self.rbd is None:
            locations = LOCATIONS_CONF if self.show_locations else ""
            return API_CONF.format(dir=self.dir, url=self.url, store="fs", store_type="file",
                                   default_extra=locations,
                                   store_section=FS_STORE.format(dir=self.dir))
        return API_CONF.format(dir=self.dir, url=self.url, store="rbd", store_type="rbd",
                               default_extra=LOCATIONS_CONF,
                               store_section=RBD_STORE.format(ceph_conf=self.rbd.conf_path,
                                                                pool=self.rbd.pool))

    def _write_config(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "staging", "tasks"):
            (self.dir / sub).mkdir(exist_ok=True)
        paste, conf = PASTE_INI, self._api_conf()
        if self.keystone is not None:
            paste += KEYSTONE_PASTE_INI
            # oslo.config merges this second [paste_deploy] into the first.
            conf += "\n[paste_deploy]\nflavor = keystone\n\n" + \
                self.keystone.authtoken_config(f"glance-{self.port}")
        (self.dir / "glance-api-paste.ini").write_text(paste)
        (self.dir / "glance-api.conf").write_text(conf)
        (self.dir / "glance-manage.conf").write_text(
            f"[DEFAULT]\nlog_file = {self.dir}/glance-manage.log\n"
            f"[database]\nconnection = sqlite:///{self.dir}/glance.sqlite\n")

    def start(self, timeout: float = 120.0):
        self._write_config()
        bindir = Path(sys.executable).parent
        manage = shutil.which("glance-manage", path=str(bindir)) or "glance-manage"
        subprocess.run([manage, "--config-file", str(self.dir / "glance-manage.conf"),
                        "db_sync"], check=True, capture_output=True)
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=str(self.dir))
        log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--port", str(self.port),
             *(["--keystone"] if self.keystone is not None else [])],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Glance exited at start:\n"
                                   + (self.dir / "server.log").read_text()[-4000:])
            try:
                urllib.request.urlopen(self.url + "/_test/stats", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Glance did not start within {timeout}s")

    def stop(self):
        stop_group(self.proc)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the control channel -------------------------------------------
    def _post(self, path, body=None):
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/_test/stats", timeout=10).read())

    def reset(self):
        self._post("/_test/reset")

    def faults(self, **faults):
        self._post("/_test/faults", faults)

    def tokens(self, add: dict[str, str] | None = None, revoke: list[str] = ()) -> list[str]:
        """Add tokens (new token -> a token whose identity it shares), revoke others."""
        return self._post("/_test/tokens", {"add": add or {}, "revoke": list(revoke)})


def _exit(*_):
    raise SystemExit(0)


def _serve(port: int, keystone: bool = False):
    from cheroot import wsgi

    from glance.wsgi.api import application

    app = IdentityWrapper(application, maps_tokens=not keystone)
    server = wsgi.Server(("127.0.0.1", port), app, numthreads=16, request_queue_size=64)
    # SIGTERM unwinds the serve loop, and then the server stops.  (server.stop()
    # in the handler would wait forever for the loop the handler interrupted.)
    signal.signal(signal.SIGTERM, _exit)
    try:
        server.start()
    finally:
        server.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keystone", action="store_true")
    args = parser.parse_args()
    _serve(args.port, args.keystone)
