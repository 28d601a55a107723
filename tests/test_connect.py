"""From options and OS_* variables to a driver, a context and an API
(imagefs.connect), and the chooser of sources built over a driver."""

from __future__ import annotations

import io
import os

import pytest
from memory_driver import MemoryDriver

from imagefs import errors
from imagefs.connect import (ServiceOptions, check_image_url, describe, is_explicit, open_api,
                             open_chooser)
from imagefs.context import RequestContext
from imagefs.drivers.local import LocalDriver
from imagefs.retry import RetryPolicy
from imagefs.sources import FILE
from imagefs.sources.choose import DirectOptions


def test_the_store_option_is_the_embedded_store_as_its_admin(tmp_path):
    opts = ServiceOptions.from_env({}, store=str(tmp_path / "store"))
    api, ctx = open_api(opts, {})
    assert isinstance(api.default, LocalDriver) and ctx.is_admin
    assert is_explicit(opts, {}) and describe(opts, {}) == f"embedded store {tmp_path}/store"
    record = api.create(ctx, {"name": "n", "disk_format": "raw", "container_format": "bare"},
                        data=b"bytes")
    out = io.BytesIO()
    api.download(ctx, record["id"], data=out)
    assert out.getvalue() == b"bytes"


def test_options_that_cannot_go_together():
    with pytest.raises(errors.ConfigError, match="cannot be combined"):
        ServiceOptions.from_env({}, store="/s", os_cloud="c")
    with pytest.raises(errors.ConfigError, match="one of"):
        ServiceOptions.from_env({}, os_auth_token="t", os_auth_token_file="f")
    with pytest.raises(errors.ConfigError, match="both set"):
        ServiceOptions.from_env({"OS_AUTH_TOKEN": "t", "OS_AUTH_TOKEN_FILE": "f"})
    with pytest.raises(errors.ConfigError, match="--os-image-url"):
        open_api(ServiceOptions.from_env({"OS_AUTH_TOKEN": "t"}), {})
    with pytest.raises(errors.ConfigError, match="--os-auth-token"):
        open_api(ServiceOptions.from_env({"OS_IMAGE_URL": "http://glance:9292"}), {})


def test_options_outrank_variables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = ServiceOptions.from_env({"OS_AUTH_TOKEN": "env", "OS_IMAGE_URL": "http://a"},
                                   os_auth_token_file="tok")
    assert opts.os_auth_token is None and opts.os_auth_token_file == str(tmp_path / "tok")
    assert opts.os_image_url == "http://a"


@pytest.mark.parametrize("url, match", [("glance:9292", "no scheme"),
                                        ("ftp://glance", "not an http"),
                                        ("http://", "not an http")])
def test_image_urls_are_checked(url, match):
    with pytest.raises(errors.ConfigError, match=match):
        check_image_url(url)
    check_image_url("https://glance.example:9292/image")


def test_nothing_given_is_the_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    opts = ServiceOptions.from_env({})
    assert not is_explicit(opts, {})
    api, ctx = open_api(opts, {})
    assert api.default.root == tmp_path / "imagefs" / "store"


def test_open_chooser_asks_the_driver_for_locations_with_retries(tmp_path):
    driver = MemoryDriver()
    data = os.urandom(5000)
    image_id = driver.add(data)["id"]
    (tmp_path / "img").write_bytes(data)
    driver.locations[image_id] = [{"url": f"file://{tmp_path}/img"}]
    chooser = open_chooser(driver, RequestContext.local_admin(),
                           DirectOptions(frozenset({FILE})), RetryPolicy(base_delay=0.001))
    real_get, failures = driver.get, [errors.BackendUnavailable("503")]

    def flaky_get(ctx, image_id, include_locations=False):
        if failures:
            raise failures.pop()
        assert include_locations
        return real_get(ctx, image_id, include_locations)
    driver.get = flaky_get
    source = chooser.open(image_id, len(data))
    assert source.kind == FILE and source.read(0, 5000) == data
    source.close()
    service = chooser.open(image_id, len(data), direct=False)
    assert service.kind == "memory" and service.read(0, 10) == data[:10]
