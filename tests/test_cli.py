"""The imagefs command as an operator runs it: a real process, real Glance, real files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import random_bytes

pytestmark = pytest.mark.glance


def run(args, env=None, check=True):
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.run([sys.executable, "-m", "imagefs", *args], capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def as_json(proc):
    return json.loads(proc.stdout)


@pytest.fixture
def alice_env(glance_clean):
    return {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url}


@pytest.fixture
def bob_env(glance_clean):
    return {"OS_AUTH_TOKEN": "bob-token", "OS_IMAGE_URL": glance_clean.url}


def verbs_round_trip(tmp_path, env, extra=(), tag="t"):
    """Every image verb once; returns nothing, asserts everything."""
    data = random_bytes(1_500_000)
    src = tmp_path / "src.img"
    src.write_bytes(data)
    created = as_json(run(["image", "create", f"cli-{tag}", "--file", str(src), "--disk-format",
                           "raw", "--container-format", "bare", "--property", f"test_tag={tag}",
                           "--property", "os_distro=cirros", "-f", "json", *extra], env))
    assert created["status"] == "active" and created["size"] == len(data)
    image_id = created["id"]

    shown = as_json(run(["image", "show", image_id, "-f", "json", *extra], env))
    for field in ("id", "name", "status", "size", "disk_format", "container_format", "checksum",
                  "os_hash_algo", "os_hash_value", "min_disk", "min_ram", "owner",
                  "visibility", "protected", "created_at", "updated_at", "properties"):
        assert field in shown
    assert shown["properties"] == {"test_tag": tag, "os_distro": "cirros"}
    table = run(["image", "show", image_id, *extra], env).stdout
    assert image_id in table and "properties.os_distro" in table

    listed = as_json(run(["image", "list", "--property", f"test_tag={tag}", "-f", "json", *extra], env))
    assert [r["id"] for r in listed] == [image_id]

    updated = as_json(run(["image", "update", image_id, "--name", "renamed", "--property",
                           "hw_disk_bus=virtio", "-f", "json", *extra], env))
    assert updated["name"] == "renamed"
    assert updated["properties"] == {"test_tag": tag, "os_distro": "cirros", "hw_disk_bus": "virtio"}
    purged = as_json(run(["image", "update", image_id, "--property", f"test_tag={tag}",
                          "--purge-props", "-f", "json", *extra], env))
    assert purged["properties"] == {"test_tag": tag}

    out = tmp_path / "out.img"
    run(["image", "download", image_id, "--file", str(out), *extra], env)
    assert out.read_bytes() == data

    run(["image", "delete", image_id, *extra], env)
    gone = run(["image", "show", image_id, *extra], env, check=False)
    assert gone.returncode == 1
    assert "not found" in gone.stderr.lower() or "deleted" in gone.stderr.lower()
    errors = [line for line in gone.stderr.strip().splitlines()
              if "using the embedded store" not in line]
    assert len(errors) == 1


def test_every_verb_against_glance(tmp_path, alice_env, tag):
    verbs_round_trip(tmp_path, alice_env, tag=tag)


def test_every_verb_on_the_embedded_store_with_no_glance(tmp_path, tag):
    # No OS_* variables and no --store: the default store under XDG_DATA_HOME.
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    verbs_round_trip(tmp_path, env, tag=tag)
    assert (tmp_path / "xdg" / "imagefs" / "store" / "images").is_dir()
    listed = run(["image", "list"], env)
    store = tmp_path / "xdg" / "imagefs" / "store"
    assert listed.stderr.count(f"using the embedded store in {store}") == 1


def test_mount_without_a_service_is_refused_naming_the_options(tmp_path):
    (tmp_path / "mnt").mkdir()
    proc = run(["mount", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c")],
               {"XDG_DATA_HOME": str(tmp_path / "xdg")}, check=False)
    assert proc.returncode == 2
    assert "no image service given" in proc.stderr and "--os-cloud" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.parametrize("case,says", [
    ("missing", "does not exist"), ("file", "is not a directory"), ("full", "is not empty"),
    ("deadline", "read deadline must be > 0"), ("ttl", "TTLs must be >= 0"),
])
def test_mount_refuses_bad_settings_in_one_line(tmp_path, case, says):
    mnt = tmp_path / "mnt"
    extra = []
    if case == "file":
        mnt.write_text("x")
    elif case != "missing":
        mnt.mkdir()
    if case == "full":
        (mnt / "something").write_text("x")
    extra = {"deadline": ["--read-deadline", "0"], "ttl": ["--list-ttl", "-1"]}.get(case, [])
    proc = run(["mount", str(mnt), "--store", str(tmp_path / "s"), "--cache-dir",
                str(tmp_path / "c"), *extra], {}, check=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_umount_refuses_what_is_not_an_imagefs_mount(tmp_path):
    proc = run(["umount", "/proc"], {}, check=False)
    assert proc.returncode == 2 and "not an imagefs one" in proc.stderr


def test_every_verb_with_store_option_after_the_subcommand(tmp_path, tag):
    verbs_round_trip(tmp_path, {}, extra=("--store", str(tmp_path / "store")), tag=tag)


def test_list_shows_own_and_public_never_anothers_private(tmp_path, glance_clean, alice_env,
                                                          bob_env, tag):
    admin_env = {"OS_AUTH_TOKEN": "admin-token", "OS_IMAGE_URL": glance_clean.url}
    src = tmp_path / "x"
    src.write_bytes(b"x" * 100)

    def create(env, name, *flags):
        return as_json(run(["image", "create", name, "--file", str(src), "--disk-format", "raw",
                            "--container-format", "bare", "--property", f"test_tag={tag}",
                            "-f", "json", *flags], env))["id"]

    public = create(admin_env, "public", "--public")
    alice_own = create(alice_env, "alice", "--private")
    bob_own = create(bob_env, "bob", "--private")
    seen = {r["id"] for r in as_json(run(["image", "list", "--property", f"test_tag={tag}",
                                          "-f", "json"], alice_env))}
    assert seen == {public, alice_own}
    assert bob_own not in seen
    denied = run(["image", "show", bob_own], alice_env, check=False)
    assert denied.returncode == 1 and "not found" in denied.stderr.lower()


def test_clouds_yaml(tmp_path, glance_clean, tag):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  test:\n    auth_type: admin_token\n    auth:\n"
                      f"      endpoint: {glance_clean.url}\n      token: alice-token\n")
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds)}
    run(["image", "list", "--os-cloud", "test"], env)
    missing = run(["image", "list", "--os-cloud", "nope"], env, check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_bad_token_is_one_clear_line(glance_clean):
    proc = run(["image", "list"], {"OS_AUTH_TOKEN": "wrong", "OS_IMAGE_URL": glance_clean.url},
               check=False)
    assert proc.returncode == 1
    assert "authentication" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unreachable_glance_is_one_clear_line():
    from glance_server import free_port

    proc = run(["image", "list", "--timeout", "2"], {"OS_AUTH_TOKEN": "t",
               "OS_IMAGE_URL": f"http://127.0.0.1:{free_port()}"}, check=False)
    assert proc.returncode == 1
    assert "cannot reach" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, code, words", [
    (["image", "show"], 2, "required"),
    (["image", "create", "x", "--disk-format", "raw", "--container-format", "bare",
      "--property", "novalue"], 2, "KEY=VALUE"),
    (["image", "create", "x", "--disk-format", "raw", "--container-format", "bare",
      "--file", "/nonexistent/file"], 2, "cannot read /nonexistent/file"),
    (["image", "show", "not-a-uuid"], 1, "no image named 'not-a-uuid' (nor is it an image UUID"),
    (["image", "list", "--os-auth-token", "t"], 2, "cannot be combined"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, code, words):
    proc = run([*args, "--store", str(tmp_path)] if args[1] != "show" or len(args) > 2
               else args, check=False)
    assert proc.returncode == code
    assert words in proc.stderr


def test_token_without_url_is_a_clear_error():
    proc = run(["image", "list"], {"OS_AUTH_TOKEN": "t"}, check=False)
    assert proc.returncode == 2 and "OS_IMAGE_URL" in proc.stderr


def test_progress_on_a_terminal(tmp_path):
    import pty

    src = tmp_path / "src"
    src.write_bytes(random_bytes(3_000_000))
    leader, follower = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.run([sys.executable, "-m", "imagefs", "image", "create", "p", "--file",
                           str(src), "--disk-format", "raw", "--container-format", "bare",
                           "--store", str(tmp_path / "store"), "-f", "json"],
                          stdout=subprocess.PIPE, stderr=follower, env=base, timeout=60)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"uploading" in shown and b"MiB" in shown
    # and none when stderr is not a terminal
    quiet = run(["image", "create", "q", "--file", str(src), "--disk-format", "raw",
                 "--container-format", "bare", "--store", str(tmp_path / "store")])
    assert quiet.stderr == ""


def test_a_token_file_lists_images_and_a_loose_mode_is_warned_once(tmp_path, glance_clean):
    token_file = tmp_path / "token"
    token_file.write_text("\n alice-token \n")
    token_file.chmod(0o600)
    env = {"OS_IMAGE_URL": glance_clean.url}
    quiet = run(["image", "list", "--os-auth-token-file", str(token_file)], env)
    assert quiet.stderr == ""
    token_file.chmod(0o644)
    loose = run(["image", "list", "-f", "json"], {**env, "OS_AUTH_TOKEN_FILE": str(token_file)})
    assert isinstance(as_json(loose), list)
    assert loose.stderr.count("readable by group or others") == 1
    assert len(loose.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    ("", "is empty"),
    (" \n\n", "is empty"),
    ("<a directory>", "cannot read"),
])
def test_a_missing_or_empty_token_file_is_exit_2_in_one_line(tmp_path, glance_clean, content,
                                                             words):
    token_file = tmp_path / "token"
    if content == "<a directory>":
        token_file.mkdir()
    elif content is not None:
        token_file.write_text(content)
    proc = run(["image", "list", "--os-auth-token-file", str(token_file)],
               {"OS_IMAGE_URL": glance_clean.url}, check=False)
    assert proc.returncode == 2
    assert words in proc.stderr and str(token_file) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_token_and_a_token_file_together_are_refused_as_options_or_variables(tmp_path,
                                                                             glance_clean):
    token_file = tmp_path / "token"
    token_file.write_text("alice-token")
    proc = run(["image", "list", "--os-auth-token-file", str(token_file), "--os-auth-token",
                "alice-token", "--os-image-url", glance_clean.url], check=False)
    assert proc.returncode == 2 and "one of" in proc.stderr
    both = run(["image", "list"], {"OS_AUTH_TOKEN": "alice-token", "OS_AUTH_TOKEN_FILE":
                                   str(token_file), "OS_IMAGE_URL": glance_clean.url},
               check=False)
    assert both.returncode == 2 and "unset one" in both.stderr


def test_a_token_on_the_command_line_still_works_and_help_says_it_is_visible(glance_clean):
    listed = run(["image", "list", "-f", "json", "--os-auth-token", "alice-token",
                  "--os-image-url", glance_clean.url])
    assert isinstance(as_json(listed), list)
    text = " ".join(run(["image", "list", "--help"]).stdout.split())
    assert "visible to other users" in text and "--os-auth-token-file" in text


def test_only_the_token_option_and_its_value_leave_the_command_line():
    from imagefs.argv_token import split_token

    assert split_token(["mount", "/m", "--os-auth-token", "T", "-v"]) == \
        (["mount", "/m", "-v"], "T")
    assert split_token(["image", "list", "--os-auth-token=T", "--name", "x"]) == \
        (["image", "list", "--name", "x"], "T")
    assert split_token(["image", "list", "--os-auth-token", "A", "--os-auth-token=B"]) == \
        (["image", "list"], "B")
    assert split_token(["image", "show", "--", "--os-auth-token", "T"]) == \
        (["image", "show", "--", "--os-auth-token", "T"], None)
    assert split_token(["image", "list", "--os-auth-token-file", "F"]) == \
        (["image", "list", "--os-auth-token-file", "F"], None)


def test_a_failure_inside_the_mounts_nursery_is_reported_as_its_reason():
    trio = pytest.importorskip("trio")
    from imagefs.errors import ConfigError
    from imagefs.mount import _unwrap

    reason = ConfigError("cannot mount at /m: fuse: device not found")
    group = BaseExceptionGroup("Exceptions from Trio nursery",
                               [BaseExceptionGroup("inner", [reason, trio.Cancelled._create()])])
    assert _unwrap(group) is reason
    two = BaseExceptionGroup("two", [ConfigError("a"), ConfigError("b")])
    assert _unwrap(two) is two


def test_show_download_and_delete_take_a_unique_name(tmp_path, tag):
    store = ("--store", str(tmp_path / "store"))
    src = tmp_path / "src.img"
    src.write_bytes(b"by name")
    ids = [as_json(run(["image", "create", name, "--file", str(src), "--disk-format", "raw",
                        "--container-format", "bare", "-f", "json", *store], {}))["id"]
           for name in (f"one-{tag}", f"twice-{tag}", f"twice-{tag}")]
    assert as_json(run(["image", "show", f"one-{tag}", "-f", "json", *store], {}))["id"] == ids[0]
    run(["image", "download", f"one-{tag}", "--file", str(tmp_path / "out"), *store], {})
    assert (tmp_path / "out").read_bytes() == b"by name"
    ambiguous = run(["image", "show", f"twice-{tag}", *store], {}, check=False)
    assert ambiguous.returncode == 2 and ids[1] in ambiguous.stderr and ids[2] in ambiguous.stderr
    missing = run(["image", "show", f"none-{tag}", *store], {}, check=False)
    assert missing.returncode == 1 and "no image named" in missing.stderr
    run(["image", "delete", f"one-{tag}", *store], {})
    assert run(["image", "show", ids[0], *store], {}, check=False).returncode == 1


def test_an_image_url_without_a_scheme_suggests_http(glance_clean):
    proc = run(["image", "list", "--os-image-url", "localhost:9292"],
               {"OS_AUTH_TOKEN": "alice-token"}, check=False)
    assert proc.returncode == 2
    assert "has no scheme" in proc.stderr and "http://localhost:9292" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert glance_clean.stats()["requests"] == 0


@pytest.mark.parametrize("path, status", [("/wrong", "300"), ("/_test/nothing", "404")])
def test_an_endpoint_without_the_image_api_says_so(glance_clean, tag, path, status):
    # Glance's version negotiation answers 300 to a wrong path; other servers 404.
    url = glance_clean.url + path
    for args in (["image", "list"], ["image", "show", "00000000-0000-4000-8000-000000000000"]):
        proc = run([*args, "--os-image-url", url], {"OS_AUTH_TOKEN": "alice-token"},
                   check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"no image API at {url}" in proc.stderr and status in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    # an image that is not there is still "not found", not a wrong URL
    missing = run(["image", "show", "00000000-0000-4000-8000-000000000000"],
                  {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url},
                  check=False)
    assert missing.returncode == 1 and "no image API" not in missing.stderr


# ---- records, output formats and columns ---------------------------------------------
def test_show_gives_the_locations_glance_shows_and_nothing_else_does(tmp_path, glance_locations,
                                                                     tag):
    env = {"OS_AUTH_TOKEN": "admin-token", "OS_IMAGE_URL": glance_locations.url}
    src = tmp_path / "src"
    src.write_bytes(b"where am I")
    created = as_json(run(["image", "create", f"loc-{tag}", "--file", str(src), "--disk-format",
                           "raw", "--container-format", "bare", "--property",
                           f"test_tag={tag}", "-f", "json"], env))
    assert "locations" not in created and "direct_url" not in created
    shown = as_json(run(["image", "show", created["id"], "-f", "json"], env))
    assert shown["direct_url"].startswith("file://")
    assert [loc["url"] for loc in shown["locations"]] == [shown["direct_url"]]
    assert (shown["virtual_size"], shown["stores"], shown["tags"], shown["os_hidden"]) == \
        (10, ["fs"], [], False)
    assert "file://" in run(["image", "show", created["id"]], env).stdout
    listed = run(["image", "list", "--property", f"test_tag={tag}", "-f", "json"], env).stdout
    assert created["id"] in listed and "file://" not in listed
    updated = run(["image", "update", created["id"], "--tag", "x", "-f", "json"], env).stdout
    assert "file://" not in updated


def create_args(name, src, *extra):
    return ["image", "create", name, "--file", str(src), "--disk-format", "raw",
            "--container-format", "bare", *extra]


def test_formats_and_columns_as_openstack_prints_them(tmp_path, tag):
    import yaml

    store = ("--store", str(tmp_path / "store"))
    src = tmp_path / "src"
    src.write_bytes(b"formats")
    image_id = run(create_args(f"f-{tag}", src, "--tag", "web", "-f", "value", "-c", "id",
                               *store), {}).stdout.strip()
    assert len(image_id) == 36
    shown = as_json(run(["image", "show", image_id, "-f", "json", *store], {}))
    assert yaml.safe_load(run(["image", "show", image_id, "-f", "yaml", *store], {}).stdout) \
        == shown
    assert run(["image", "show", image_id, "-f", "value", "-c", "name", "-c", "size",
                *store], {}).stdout == f"f-{tag}\n7\n"
    assert as_json(run(["image", "update", image_id, "--name", "g", "-f", "json", "-c",
                        "name", "-c", "tags", *store], {})) == {"name": "g", "tags": ["web"]}
    assert run(["image", "list", "-f", "value", "-c", "ID", "-c", "Name", "-c", "Tags",
                *store], {}).stdout == f"{image_id} g web\n"
    assert yaml.safe_load(run(["image", "list", "-f", "yaml", "-c", "id", "-c", "Disk Format",
                               *store], {}).stdout) == [{"id": image_id, "disk_format": "raw"}]
    table = run(["image", "list", "-c", "Name", "-c", "Size", *store], {}).stdout
    assert "| Name | Size |" in table and image_id not in table


@pytest.mark.parametrize("action", ["list", "show", "create", "update"])
def test_an_unknown_column_is_one_line_and_exit_2_before_any_request(tmp_path, glance_clean,
                                                                     alice_env, action):
    src = tmp_path / "src"
    src.write_bytes(b"never")
    args = {"list": ["image", "list"], "show": ["image", "show", "x"],
            "create": create_args("never", src), "update": ["image", "update", "x"]}[action]
    proc = run([*args, "-c", "ID", "-c", "Nmae"], alice_env, check=False)
    assert proc.returncode == 2
    assert "unknown column 'Nmae'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert glance_clean.stats()["requests"] == 0  # and so no image was made


def test_list_long_tags_and_hidden(tmp_path, glance_clean, alice_env, tag):
    from conftest import ALICE

    from imagefs.api import API
    from imagefs.drivers.glance import GlanceDriver

    api = API(GlanceDriver(glance_clean.url))
    info = {"disk_format": "raw", "container_format": "bare", "properties": {"test_tag": tag}}
    both = api.create(ALICE, {**info, "name": "both", "tags": ["x", "y"]}, data=b"1")["id"]
    time.sleep(1.1)  # created_at shows whole seconds: the merge of --hidden sorts by it
    one = api.create(ALICE, {**info, "name": "one", "tags": ["x"]}, data=b"2")["id"]
    time.sleep(1.1)
    hidden = api.create(ALICE, {**info, "name": "hid", "tags": ["x"], "os_hidden": True},
                        data=b"3")["id"]
    mine = ("--property", f"test_tag={tag}")

    def ids(*args):
        return [r["id"] for r in as_json(run(["image", "list", *mine, "-f", "json", *args],
                                             alice_env))]
    assert ids() == [one, both]
    assert ids("--tag", "x", "--tag", "y") == [both]
    assert ids("--hidden") == [hidden, one, both]
    assert ids("--hidden", "--tag", "x", "--limit", "2") == [hidden, one]
    long = run(["image", "list", *mine, "--long"], alice_env).stdout.splitlines()
    assert [h.strip() for h in long[1].strip("|").split("|")] == [
        "ID", "Name", "Disk Format", "Container Format", "Size", "Checksum", "Status",
        "Visibility", "Protected", "Project", "Tags"]
    assert any(both in line and "x, y" in line and "False" in line for line in long)


@pytest.mark.parametrize("where", ["glance", "store"])
def test_tags_and_protection_and_a_protected_image_is_not_deleted(tmp_path, request, where,
                                                                  tag):
    if where == "glance":
        glance = request.getfixturevalue("glance_clean")
        env, extra = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}, ()
    else:
        env, extra = {}, ("--store", str(tmp_path / "store"))
    src = tmp_path / "src"
    src.write_bytes(b"keep me")
    created = as_json(run(create_args(f"p-{tag}", src, "--tag", "a", "--tag", "b",
                                      "--protected", "-f", "json", *extra), env))
    assert created["tags"] == ["a", "b"] and created["protected"] is True
    refused = run(["image", "delete", created["id"], *extra], env, check=False)
    assert refused.returncode == 1
    assert "is protected" in refused.stderr and "--unprotected" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert as_json(run(["image", "show", created["id"], "-f", "json", *extra], env))[
        "status"] == "active"
    updated = as_json(run(["image", "update", created["id"], "--tag", "c", "--remove-tag", "a",
                           "--unprotected", "-f", "json", *extra], env))
    assert updated["tags"] == ["b", "c"] and updated["protected"] is False
    run(["image", "delete", created["id"], *extra], env)


# ---- download ----------------------------------------------------------------------------
@pytest.fixture
def alice_image(tmp_path, glance_clean, alice_env, tag):
    """(id, bytes) of a 2 MB image of alice's, with the counters zeroed after it."""
    data = random_bytes(2_000_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    image_id = run(create_args(f"dl-{tag}", src, "-f", "value", "-c", "id"),
                   alice_env).stdout.strip()
    glance_clean.reset()
    return image_id, data


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_download_has_the_mode_the_umask_gives(tmp_path, alice_env, alice_image, umask, mode):
    image_id, data = alice_image
    out = tmp_path / "out.img"
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.run([sys.executable, "-m", "imagefs", "image", "download", image_id,
                           "--file", str(out)], env={**base, **alice_env}, umask=umask,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == mode


@pytest.mark.parametrize("case, says", [("missing", "does not exist"),
                                        ("directory", "is a directory")])
def test_a_bad_download_path_is_one_line_before_any_byte(tmp_path, glance_clean, alice_env,
                                                         alice_image, case, says):
    image_id, _ = alice_image
    target = tmp_path / "nowhere" / "out.img" if case == "missing" else tmp_path
    proc = run(["image", "download", image_id, "--file", str(target)], alice_env, check=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert glance_clean.stats()["data_bytes"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_download_to_stdout(alice_env, alice_image):
    image_id, data = alice_image
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.run([sys.executable, "-m", "imagefs", "image", "download", image_id,
                           "--file", "-"], env={**base, **alice_env}, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data and proc.stderr == b""


def test_sigterm_during_a_download_removes_the_temporary_file(tmp_path, glance_clean,
                                                              alice_env, alice_image):
    image_id, _ = alice_image
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    glance_clean.faults(rate=200_000)  # 2 MB: ten seconds
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.Popen([sys.executable, "-m", "imagefs", "image", "download", image_id,
                             "--file", str(out_dir / "img")], env={**base, **alice_env},
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            temps = list(out_dir.iterdir())
            if temps and temps[0].stat().st_size > 0:
                break
            time.sleep(0.05)
        assert len(temps) == 1 and temps[0].name.startswith(".img.")
        assert stat.S_IMODE(temps[0].stat().st_mode) == 0o600  # not for others while unchecked
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=20)[1]
    finally:
        proc.kill()
        glance_clean.faults()
    assert proc.returncode == 143
    assert stderr.strip() == "imagefs: terminated"
    assert list(out_dir.iterdir()) == []
