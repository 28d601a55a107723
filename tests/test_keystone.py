"""The imagefs command against a real Keystone: passwords, the catalog, tokens that end.

Every test runs the imagefs command as an operator would (``imagefs image``
or ``imagefs mount`` in a subprocess) against ``glance_ks``, a Glance behind
keystonemiddleware that imagefs finds through Keystone's catalog unless told
its URL.  So whether a token is good is Keystone's decision, and what it may
see is Glance's.

The expiry tests have a Keystone of their own whose tokens live 60 s; they
share one wait for a token to expire, so the module takes a little over a
minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import time
import types
from pathlib import Path

import pytest
from conftest import glance_behind, random_bytes
from keystone_server import ADMIN_PASSWORD, ADMIN_PROJECT, ADMIN_USER, DOMAIN, KeystoneServer
from test_cli import as_json, run
from test_mount import Mount

from imagefs.api import API
from imagefs.context import RequestContext
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.keystone, pytest.mark.glance]
MiB = 1 << 20
#: Images are read at the head first, and later far from it, where nothing can
#: be cached yet: the kernel reads ahead up to 4 MiB, and the mount's own
#: readahead starts only once reads have covered 4 MiB without a gap.
IMAGE_SIZE = 20 * MiB + 4321
HEAD = 256 << 10
REFUSED_AT = 10 * MiB   # a read expected to be refused (EACCES)
UNCACHED_AT = 16 * MiB  # a read expected to be served, after a token ended
TAG = "keystone-tests"
SHORT_LIFE = 60  # seconds a token of the short-lived Keystone is good for


@dataclasses.dataclass(frozen=True)
class User:
    """A Keystone user with a password and a project, and the ways to give them to imagefs."""

    name: str
    password: str
    project: str
    id: str = ""

    def env(self, keystone: KeystoneServer) -> dict[str, str]:
        """The usual ``OS_*`` variables of an openrc file."""
        return {"OS_AUTH_URL": keystone.auth_url, "OS_USERNAME": self.name,
                "OS_PASSWORD": self.password, "OS_PROJECT_NAME": self.project,
                "OS_USER_DOMAIN_NAME": DOMAIN, "OS_PROJECT_DOMAIN_NAME": DOMAIN,
                "OS_IDENTITY_API_VERSION": "3"}

    def clouds_yaml(self, keystone: KeystoneServer, path: Path, cloud: str) -> dict[str, str]:
        """Write a ``clouds.yaml`` (as JSON, which is YAML) at ``path`` with ``cloud``
        (password auth, no image endpoint); the variable that points imagefs at it."""
        path.write_text(json.dumps({"clouds": {cloud: {
            "auth_type": "password", "identity_api_version": 3,
            "auth": {"auth_url": keystone.auth_url, "username": self.name,
                     "password": self.password, "project_name": self.project,
                     "user_domain_name": DOMAIN, "project_domain_name": DOMAIN}}}}))
        return {"OS_CLIENT_CONFIG_FILE": str(path)}

    def context(self, keystone: KeystoneServer) -> RequestContext:
        """An in-process context with a keystoneauth session (to set up images)."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        return RequestContext(session=session.Session(auth=v3.Password(
            auth_url=keystone.auth_url, username=self.name, password=self.password,
            project_name=self.project, user_domain_name=DOMAIN, project_domain_name=DOMAIN)))

    def token(self, keystone: KeystoneServer) -> str:
        return keystone.issue_token(self.name, self.password, self.project)


ADMIN = User(ADMIN_USER, ADMIN_PASSWORD, ADMIN_PROJECT)


def add_user(keystone: KeystoneServer, name: str, project: str) -> User:
    password = f"{name}-password"
    return User(name, password, project, keystone.create_user(name, password, project))


def upload(glance, keystone, user: User, data: bytes, **info) -> str:
    api = API(GlanceDriver(glance.url))
    info = {"name": f"ks-{user.name}", "disk_format": "raw", "container_format": "bare",
            "properties": {"test_tag": TAG}, **info}
    return api.create(user.context(keystone), info, data=data)["id"]


def write_token(path: Path, token: str) -> None:
    """Replace the token file whole (a new file renamed over the old one)."""
    new = path.with_name(path.name + ".new")
    new.write_text(token + "\n")
    new.chmod(0o600)
    os.replace(new, path)


def read_at(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def read_head(path: Path, data: bytes) -> None:
    assert read_at(path, 0, HEAD) == data[:HEAD]


def read_uncached(path: Path, data: bytes) -> None:
    assert read_at(path, UNCACHED_AT, MiB) == data[UNCACHED_AT: UNCACHED_AT + MiB]


def refused_once_then_served(glance, mnt, data: Path, images) -> None:
    """An uncached read and a listing work; Glance refused the old token once on the way."""
    before = glance.stats()
    read_uncached(data, images.data)
    assert images.alice in os.listdir(mnt.path)
    after = glance.stats()
    assert after["unauthorized"] > before["unauthorized"]  # refused once, then served
    assert after["data_requests"] > before["data_requests"]
    assert mnt.proc.poll() is None


def probe_refusal(path: Path) -> None:
    """A read refused (EACCES) because the token file still holds a dead token:
    proof that Glance does refuse it, before the file is rewritten."""
    with pytest.raises(OSError) as refused:
        read_at(path, REFUSED_AT, MiB)
    assert refused.value.errno == errno.EACCES


def listed_ids(args, env) -> set[str]:
    rows = as_json(run(["image", "list", "--property", f"test_tag={TAG}", "-f", "json",
                        *args], env))
    return {r["id"] for r in rows}


@pytest.fixture(scope="module")
def users(keystone):
    """alice (project alpha), bob (project beta), dave (project alpha, like alice)."""
    return types.SimpleNamespace(alice=add_user(keystone, "alice", "alpha"),
                                 bob=add_user(keystone, "bob", "beta"),
                                 dave=add_user(keystone, "dave", "alpha"))


@pytest.fixture(scope="module")
def images(glance_ks, keystone, users):
    """alice's and bob's private images and the admin's public one, with alice's bytes."""
    data = random_bytes(IMAGE_SIZE)
    return types.SimpleNamespace(
        data=data,
        alice=upload(glance_ks, keystone, users.alice, data, visibility="private"),
        bob=upload(glance_ks, keystone, users.bob, b"bob's bytes", visibility="private"),
        public=upload(glance_ks, keystone, ADMIN, b"public bytes", visibility="public"))


def check_unmount(m: Mount) -> None:
    """Unmount ``m``: a clean exit, and no traceback in its output."""
    assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output(), m.output()


@pytest.fixture
def mounts(tmp_path):
    """mount(env, *extra, name=...) -> a Mount; unmounted and checked at teardown."""
    with contextlib.ExitStack() as stack:
        def mount(env, *extra, name="mnt"):
            m = Mount(tmp_path / name, tmp_path / f"cache-{name}", env, *extra)
            stack.callback(check_unmount, m)
            return m
        yield mount


# --- password authentication, Glance from the catalog -----------------------

def test_password_auth_from_clouds_yaml_finds_glance_in_the_catalog(tmp_path, keystone,
                                                                     users, images):
    env = users.alice.clouds_yaml(keystone, tmp_path / "clouds.yaml", "kscloud")
    assert listed_ids(["--os-cloud", "kscloud"], env) == {images.alice, images.public}


def test_password_auth_from_os_variables_finds_glance_in_the_catalog(keystone, users, images):
    assert listed_ids([], users.alice.env(keystone)) == {images.alice, images.public}


@pytest.mark.parametrize("way", ["clouds.yaml", "OS_* variables"])
def test_a_wrong_password_is_one_line_and_a_failed_exit(tmp_path, keystone, glance_ks, users,
                                                        way):
    wrong = dataclasses.replace(users.alice, password="not-the-password")
    if way == "clouds.yaml":
        env, args = wrong.clouds_yaml(keystone, tmp_path / "clouds.yaml", "kscloud"), \
            ["--os-cloud", "kscloud"]
    else:
        env, args = wrong.env(keystone), []
    listing = run(["image", "list", *args], env, check=False)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mount = run(["mount", str(mountpoint), "--cache-dir", str(tmp_path / "cache"), *args],
                env, check=False)
    for proc in (listing, mount):
        assert proc.returncode == 1, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "authentication" in proc.stderr, proc.stderr
    assert not os.path.ismount(mountpoint)


def test_another_projects_private_image_is_not_listed(keystone, users, images):
    assert listed_ids([], users.alice.env(keystone)) == {images.alice, images.public}
    assert listed_ids([], users.bob.env(keystone)) == {images.bob, images.public}
    denied = run(["image", "show", images.bob], users.alice.env(keystone), check=False)
    assert denied.returncode == 1 and "not found" in denied.stderr.lower()


# --- tokens that stop being good under a mount -------------------------------

def test_a_password_mount_authenticates_again_when_its_token_is_revoked(
        keystone, glance_ks, users, images, mounts):
    dave = users.dave
    mnt = mounts(dave.env(keystone))
    data = mnt.image(images.alice) / "data"
    read_head(data, images.data)
    # Disabling a user revokes every token Keystone issued to them, the
    # mount's included.  Revocation is to the second: a token issued in the
    # second of the revocation is revoked too, so the next one waits a second.
    keystone.set_user_enabled(dave.id, False)
    keystone.set_user_enabled(dave.id, True)
    time.sleep(1.1)
    refused_once_then_served(glance_ks, mnt, data, images)


def test_a_token_file_rewritten_after_revocation_is_read_again_on_401(
        tmp_path, keystone, glance_ks, users, images, mounts):
    alice = users.alice
    token_file = tmp_path / "token"
    first = alice.token(keystone)
    write_token(token_file, first)
    mnt = mounts({}, "--os-auth-token-file", str(token_file), "--os-image-url", glance_ks.url)
    data = mnt.image(images.alice) / "data"
    read_head(data, images.data)
    keystone.revoke_token(first)
    assert not keystone.token_is_valid(first)
    probe_refusal(data)
    write_token(token_file, alice.token(keystone))
    refused_once_then_served(glance_ks, mnt, data, images)


# --- tokens that expire under a mount ------------------------------------------

@pytest.fixture(scope="module")
def expired(tmp_path_factory):
    """Two mounts of carol's image through a Keystone whose tokens live 60 s, each
    having read the image's head, after the token of the token-file mount expired.

    ``password``: a mount with password auth (``--os-cloud``); ``token_file``:
    a mount with a token file (and ``--os-image-url``), the file still holding
    the expired token.  Both are unmounted and checked at teardown.
    """
    work = tmp_path_factory.mktemp("expiry")
    with contextlib.ExitStack() as stack:
        keystone = KeystoneServer(work / "keystone", expiration=SHORT_LIFE).start()
        stack.callback(keystone.stop)
        glance = glance_behind(keystone, work / "glance")
        stack.callback(glance.stop)
        carol = add_user(keystone, "carol", "gamma")
        data = random_bytes(IMAGE_SIZE)
        image = upload(glance, keystone, carol, data)
        cloud = carol.clouds_yaml(keystone, work / "clouds.yaml", "short")
        token_file = work / "token"
        token = carol.token(keystone)
        write_token(token_file, token)
        issued = time.monotonic()
        password = Mount(work / "password", work / "cache-password", cloud, "--os-cloud", "short")
        stack.callback(check_unmount, password)
        token_mount = Mount(work / "token-file", work / "cache-token-file", {},
                            "--os-auth-token-file", str(token_file), "--os-image-url", glance.url)
        stack.callback(check_unmount, token_mount)
        for m in (password, token_mount):
            read_head(m.image(image) / "data", data)
        time.sleep(max(0.0, issued + SHORT_LIFE - time.monotonic()))
        deadline = time.monotonic() + 30
        while keystone.token_is_valid(token):
            assert time.monotonic() < deadline, "the token did not expire"
            time.sleep(1)
        yield types.SimpleNamespace(keystone=keystone, glance=glance, carol=carol, image=image,
                                    data=data, password=password, token_file=token_mount,
                                    token_path=token_file)


def test_a_password_mount_outlives_the_expiry_of_its_tokens(expired):
    # keystoneauth takes a new token whenever its own ends within 120 s, so with
    # 60 s tokens it takes one for every request and never sends an expired
    # one: what this proves is that the mount keeps its password session (a
    # mount that kept the first token would be refused now), not the 401 path,
    # which the revocation test above takes.
    mnt = expired.password
    before = expired.glance.stats()
    read_uncached(mnt.image(expired.image) / "data", expired.data)
    assert expired.image in os.listdir(mnt.path)
    assert expired.glance.stats()["data_requests"] > before["data_requests"]
    assert mnt.proc.poll() is None and os.path.ismount(mnt.path)


def test_a_token_file_rewritten_after_expiry_is_read_again_on_401(expired):
    mnt = expired.token_file
    probe_refusal(mnt.image(expired.image) / "data")
    write_token(expired.token_path, expired.carol.token(expired.keystone))
    before = expired.glance.stats()
    read_uncached(mnt.image(expired.image) / "data", expired.data)
    assert expired.image in os.listdir(mnt.path)
    after = expired.glance.stats()
    assert after["unauthorized"] > before["unauthorized"]  # the expired token, refused once
    assert after["data_requests"] > before["data_requests"]
    assert mnt.proc.poll() is None and os.path.ismount(mnt.path)
