"""A real Keystone on loopback, for tests.

``KeystoneServer`` writes a ``keystone.conf`` into a directory (sqlite
database, fernet and credential keys, all under that directory; token
lifetime ``expiration`` seconds), runs the ``keystone-manage`` commands
``db_sync``, ``fernet_setup``, ``credential_setup`` and ``bootstrap`` (in one
subprocess: see ``_manage``), and starts this module as a subprocess that
serves ``keystone.server.wsgi``'s public application under cheroot on
127.0.0.1.

``bootstrap`` leaves: the ``admin`` user (password ``ADMIN_PASSWORD``) with
the ``admin`` role on the ``admin`` project and on the system; the roles
``admin``, ``manager``, ``member``, ``reader`` (each implying the next ones)
and ``service``; the region ``REGION``; and a catalog holding the identity
service at ``auth_url`` (public, internal and admin interfaces).

The helpers below (projects, users, service users, catalog entries, tokens)
call Keystone's own API as that admin, with a system-scoped token: under
Keystone's default policies, creating projects, users and endpoints is a
system administrator's job.

Things that cost time to find out, for the next person:

- ``keystone.server.configure`` parses ``sys.argv``: the server clears its
  own arguments before it builds the application.  Without
  ``OS_KEYSTONE_CONFIG_DIR`` (or ``OS_KEYSTONE_CONFIG_FILES``) the
  application looks for ``/etc/keystone/keystone.conf``.
- Run as root, ``fernet_setup`` and ``credential_setup`` insist on
  ``--keystone-user`` and ``--keystone-group`` (the owner of the keys).
- A key directory readable by others is a warning on every token: they are
  made 0700 before ``keystone-manage`` fills them.
- ``[fernet_receipts]`` has its own key repository, by default in
  ``/etc/keystone``; it is pointed at the token keys here.
- Passwords are bcrypt-hashed with 12 rounds by default, about a quarter of a
  second per password authentication.  keystoneauth authenticates again
  whenever its token expires within 120 s (``MIN_TOKEN_LIFE_SECONDS``), so
  with a short ``expiration`` it authenticates before *every* request: the
  rounds are lowered to 4 here.
- Without a cache, every authenticated request works out the token's roles
  from SQL, validating it several times over: about half a second a request
  on a small machine, paid by every Glance request behind authtoken.  The
  in-process memory cache makes it a few milliseconds, and stays exact with
  one server process: Keystone invalidates it on its own writes (catalog,
  assignments, revocations), and checks expiry and revocation after the
  cache, on every validation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from glance_server import free_port, stop_group

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"
ADMIN_PROJECT = "admin"
REGION = "RegionOne"
DOMAIN = "Default"           # the domain bootstrap puts everything in (id ``default``)
SERVICE_PROJECT = "service"  # where service users (Glance's) live

KEYSTONE_CONF = """\
[DEFAULT]
log_file = {dir}/keystone.log
debug = false

[database]
connection = sqlite:///{dir}/keystone.sqlite

[token]
provider = fernet
expiration = {expiration}

[fernet_tokens]
key_repository = {dir}/fernet-keys

[fernet_receipts]
key_repository = {dir}/fernet-keys

[credential]
key_repository = {dir}/credential-keys

[identity]
password_hash_rounds = 4

[cache]
enabled = true
backend = dogpile.cache.memory
"""


class KeystoneServer:
    """A Keystone subprocess on 127.0.0.1; use as a context manager.

    ``url`` is the root (``http://127.0.0.1:PORT``), ``auth_url`` the v3 API
    that clients authenticate against.  Tokens live ``expiration`` seconds.
    """

    def __init__(self, workdir: Path, *, expiration: int = 3600, port: int | None = None):
        self.dir = Path(workdir)
        self.expiration = expiration
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_url = self.url + "/v3"
        self.proc: subprocess.Popen | None = None
        self._admin = None
        self._roles: dict[str, str] = {}

    # --- lifecycle -------------------------------------------------------
    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        for keys in ("fernet-keys", "credential-keys"):
            (self.dir / keys).mkdir(mode=0o700, exist_ok=True)
        conf = self.dir / "keystone.conf"
        conf.write_text(KEYSTONE_CONF.format(dir=self.dir, expiration=self.expiration))
        return conf

    def _setup(self, conf: Path) -> None:
        """The database, the keys, then the bootstrap: ``keystone-manage``'s
        commands, run by ``_manage`` in one subprocess.  RuntimeError with its
        output if one fails."""
        config = ["--config-file", str(conf)]
        owner = ["--keystone-user", str(os.geteuid()), "--keystone-group", str(os.getegid())]
        steps = [config + ["db_sync"], config + ["fernet_setup", *owner],
                 config + ["credential_setup", *owner], config + [
                     "bootstrap", "--bootstrap-username", ADMIN_USER,
                     "--bootstrap-password", ADMIN_PASSWORD,
                     "--bootstrap-project-name", ADMIN_PROJECT, "--bootstrap-role-name", "admin",
                     "--bootstrap-region-id", REGION, "--bootstrap-public-url", self.auth_url,
                     "--bootstrap-internal-url", self.auth_url,
                     "--bootstrap-admin-url", self.auth_url]]
        done = subprocess.run([sys.executable, __file__, "--manage", json.dumps(steps)],
                              check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError("keystone-manage failed:\n"
                               + done.stdout.decode(errors="replace")[-4000:])

    def start(self, timeout: float = 120.0) -> KeystoneServer:
        self._setup(self._write_config())
        env = dict(os.environ, OS_KEYSTONE_CONFIG_DIR=str(self.dir))
        with open(self.dir / "server.log", "wb") as log:  # the child keeps its copy
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Keystone exited at start:\n"
                                   + (self.dir / "server.log").read_text()[-4000:])
            try:
                urllib.request.urlopen(self.auth_url, timeout=1).read()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Keystone did not start within {timeout}s")

    def stop(self) -> None:
        stop_group(self.proc)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the admin's calls -----------------------------------------------
    def _session(self):
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        if self._admin is None:
            self._admin = session.Session(auth=v3.Password(
                auth_url=self.auth_url, username=ADMIN_USER, password=ADMIN_PASSWORD,
                user_domain_name=DOMAIN, system_scope="all"), timeout=30)
        return self._admin

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        resp = self._session().request(self.auth_url + path, method, json=body)
        return resp.json() if resp.content else {}

    def _find(self, kind: str, name: str) -> str | None:
        found = self._call("GET", f"/{kind}?name={name}")[kind]
        return found[0]["id"] if found else None

    def role_id(self, name: str) -> str:
        if not self._roles:
            self._roles = {r["name"]: r["id"] for r in self._call("GET", "/roles")["roles"]}
        return self._roles[name]

    def create_project(self, name: str) -> str:
        """The id of a new project ``name`` in the default domain."""
        return self._call("POST", "/projects", {"project": {
            "name": name, "domain_id": "default"}})["project"]["id"]

    def create_user(self, name: str, password: str, project: str,
                    roles: tuple[str, ...] = ("member", "reader")) -> str:
        """The id of a new user with ``password`` and ``roles`` on the project
        named ``project`` (created if missing)."""
        project_id = self._find("projects", project) or self.create_project(project)
        user_id = self._call("POST", "/users", {"user": {
            "name": name, "password": password, "domain_id": "default",
            "default_project_id": project_id}})["user"]["id"]
        for role in roles:
            self._call("PUT", f"/projects/{project_id}/users/{user_id}/roles/"
                              f"{self.role_id(role)}")
        return user_id

    def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        """Disabling a user revokes every token issued to them until then: to the
        second, so a token issued in that same second is revoked too."""
        self._call("PATCH", f"/users/{user_id}", {"user": {"enabled": enabled}})

    def register_endpoint(self, service_type: str, name: str, url: str) -> str:
        """Add a service to the catalog with ``url`` on all three interfaces of
        ``REGION``; the service's id."""
        service_id = self._call("POST", "/services", {"service": {
            "type": service_type, "name": name}})["service"]["id"]
        for interface in ("public", "internal", "admin"):
            self._call("POST", "/endpoints", {"endpoint": {
                "service_id": service_id, "interface": interface, "url": url,
                "region_id": REGION}})
        return service_id

    def authtoken_config(self, name: str) -> str:
        """The ``[keystone_authtoken]`` section for a service that validates its
        callers' tokens here, with a new service user ``name``.

        keystonemiddleware's pitfalls: it finds Keystone through the catalog on
        the ``internal`` interface unless told otherwise (``interface``);
        validating someone else's token needs the ``service`` role (or admin);
        and it caches what it validated for 300 s by default, in which a
        revoked or expired token is still accepted: ``token_cache_time = -1``
        sends every token to Keystone.
        """
        password = f"{name}-service-secret"
        self.create_user(name, password, SERVICE_PROJECT, roles=("service",))
        return (
            "[keystone_authtoken]\n"
            f"www_authenticate_uri = {self.auth_url}\n"
            f"auth_url = {self.auth_url}\n"
            "auth_type = password\n"
            f"username = {name}\n"
            f"password = {password}\n"
            f"project_name = {SERVICE_PROJECT}\n"
            f"user_domain_name = {DOMAIN}\n"
            f"project_domain_name = {DOMAIN}\n"
            "interface = public\n"
            f"region_name = {REGION}\n"
            "token_cache_time = -1\n"
            "http_connect_timeout = 10\n")

    # --- tokens, as a user gets them -------------------------------------
    def issue_token(self, user: str, password: str, project: str) -> str:
        """A project-scoped token for ``user``, as ``openstack token issue`` gets it."""
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "password": password, "domain": {"name": DOMAIN}}}},
            "scope": {"project": {"name": project, "domain": {"name": DOMAIN}}}}}
        req = urllib.request.Request(self.auth_url + "/auth/tokens", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.headers["X-Subject-Token"]

    def revoke_token(self, token: str) -> None:
        """Revoke ``token``, as its own holder may (``openstack token revoke``)."""
        req = urllib.request.Request(self.auth_url + "/auth/tokens", method="DELETE",
                                     headers={"X-Auth-Token": token, "X-Subject-Token": token})
        urllib.request.urlopen(req, timeout=30).read()

    def token_is_valid(self, token: str) -> bool:
        """Whether Keystone still accepts ``token`` (checked by the token itself)."""
        req = urllib.request.Request(self.auth_url + "/auth/tokens", method="HEAD",
                                     headers={"X-Auth-Token": token, "X-Subject-Token": token})
        try:
            urllib.request.urlopen(req, timeout=30).read()
            return True
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 404):
                return False
            raise


def _manage(steps: list[list[str]]) -> None:
    """``keystone-manage`` with each argument list in ``steps``, in turn, in this
    one process: keystone-manage's own entry point, its configuration cleared
    between commands (it parses the command line once per process).  A process
    per command would cost some two seconds of imports each."""
    from keystone.cmd import cli
    from keystone.conf import CONF

    for argv in steps:
        cli.main(argv=["keystone-manage", *argv])
        CONF.clear()


def _exit(*_):
    raise SystemExit(0)


def _serve(port: int):
    from cheroot import wsgi

    del sys.argv[1:]  # keystone.server.configure parses the command line
    from keystone.server.wsgi import initialize_public_application

    server = wsgi.Server(("127.0.0.1", port), initialize_public_application(),
                         numthreads=8, request_queue_size=64)
    # SIGTERM unwinds the serve loop, and then the server stops.  (Calling
    # server.stop() in the handler waits forever: the handler runs on the very
    # thread of the loop that stop() waits for.)
    signal.signal(signal.SIGTERM, _exit)
    try:
        server.start()
    finally:
        server.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--port", type=int, help="serve Keystone on this port")
    group.add_argument("--manage", metavar="JSON", help="keystone-manage commands to run")
    args = parser.parse_args()
    if args.manage:
        _manage(json.loads(args.manage))
    else:
        _serve(args.port)
