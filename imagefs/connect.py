"""From command-line options and ``OS_*`` variables to an ``API`` and a context.

Which image service, in this order:

1. ``--store DIR``: the embedded store in DIR.
2. ``--os-auth-token``/``OS_AUTH_TOKEN``, or ``--os-auth-token-file``/
   ``OS_AUTH_TOKEN_FILE``, with ``--os-image-url``/``OS_IMAGE_URL``: Glance
   at that URL with that token (no Keystone needed).  A token file is read
   again whenever Glance answers 401, so it can be rotated under a mount.
   A token or token file given as an option outranks both variables; the
   two variables together are refused.
3. ``--os-cloud``/``OS_CLOUD``, or ``OS_AUTH_URL`` and the other usual
   ``OS_*`` variables: keystoneauth through openstacksdk's config loader
   (``clouds.yaml``, ``secure.yaml``, environment), which finds Glance in the
   service catalog unless ``--os-image-url`` overrides it.
4. None of these: the embedded store in its default place
   (``$XDG_DATA_HOME/imagefs/store``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping

from .api import API
from .context import RequestContext
from .download import Progress
from .drivers.base import Driver
from .drivers.local import LocalDriver, default_store_dir
from .errors import ConfigError
from .retry import RetryPolicy, call_with_retries
from .sources.choose import DirectOptions, SourceChooser
from .sources.rbd import CephOptions
from .sources.service import ServiceSource


@dataclasses.dataclass(frozen=True)
class ServiceOptions:
    store: str | None = None
    os_cloud: str | None = None
    os_auth_token: str | None = None
    os_auth_token_file: str | None = None
    os_image_url: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **given) -> "ServiceOptions":
        """Options given on the command line win over ``OS_*`` variables."""
        given = {k: v for k, v in given.items() if v is not None}
        if given.get("store") and any(given.get(k) for k in ("os_cloud", "os_auth_token",
                                                             "os_auth_token_file", "os_image_url")):
            raise ConfigError("--store selects the embedded store; it cannot be combined with "
                              "--os-cloud, --os-auth-token, --os-auth-token-file or --os-image-url")
        if given.get("os_auth_token") and given.get("os_auth_token_file"):
            raise ConfigError("give one of --os-auth-token and --os-auth-token-file")
        # An explicit --os-cloud, token or token file outranks a token in the environment.
        if not {"os_cloud", "os_auth_token", "os_auth_token_file"} & given.keys():
            token = env.get("OS_AUTH_TOKEN") or env.get("OS_TOKEN") or None
            token_file = env.get("OS_AUTH_TOKEN_FILE") or None
            if token and token_file:
                raise ConfigError("OS_AUTH_TOKEN and OS_AUTH_TOKEN_FILE are both set; "
                                  "unset one")
            given.update(os_auth_token=token, os_auth_token_file=token_file)
        if given.get("os_auth_token_file"):  # read again later, maybe from another directory
            given["os_auth_token_file"] = os.path.abspath(given["os_auth_token_file"])
        given.setdefault("os_cloud", env.get("OS_CLOUD") or None)
        given.setdefault("os_image_url", env.get("OS_IMAGE_URL") or None)
        return cls(**given)


def service_options(args, env: Mapping[str, str] = os.environ) -> ServiceOptions:
    """The options of a parsed command line (its image service group), with ``env``."""
    return ServiceOptions.from_env(env, store=args.store, os_cloud=args.os_cloud,
                                   os_auth_token=args.os_auth_token,
                                   os_auth_token_file=args.os_auth_token_file,
                                   os_image_url=args.os_image_url, timeout=args.timeout)


def is_explicit(opts: ServiceOptions, env: Mapping[str, str] = os.environ) -> bool:
    """Whether the options or ``OS_*`` name an image service (else: the default store)."""
    return bool(opts.store or opts.os_auth_token or opts.os_auth_token_file
                or opts.os_image_url or uses_keystone(opts, env))


NO_SERVICE = ("no image service given: use --store DIR, --os-cloud NAME, "
              "--os-auth-token-file FILE with --os-image-url URL, or the OS_* variables "
              "of an openrc file")


def uses_keystone(opts: ServiceOptions, env: Mapping[str, str]) -> bool:
    return bool(opts.os_cloud or env.get("OS_AUTH_URL"))


def describe(opts: ServiceOptions, env: Mapping[str, str] = os.environ) -> str:
    """Where the images come from, for logs and messages."""
    if opts.store:
        return f"embedded store {opts.store}"
    if opts.os_auth_token or opts.os_auth_token_file or opts.os_image_url:
        return f"Glance at {opts.os_image_url}"
    if uses_keystone(opts, env):
        return f"Glance of cloud {opts.os_cloud or 'from OS_* variables'}"
    return f"embedded store {default_store_dir()}"


def check_image_url(url: str) -> None:
    """ConfigError unless ``url`` is an http(s) URL with a host: without a
    scheme, requests would fail later with "no connection adapters"."""
    import urllib.parse

    if "://" not in url:
        raise ConfigError(f"image URL {url!r} has no scheme: did you mean http://{url} ?")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"image URL {url!r} is not an http:// or https:// URL with a host")


def open_api(opts: ServiceOptions, env: Mapping[str, str] = os.environ, *,
             retry: RetryPolicy = RetryPolicy(), progress: Progress | None = None,
             direct: DirectOptions | None = None) -> tuple[API, RequestContext]:
    """The API and the caller's context for these options; with ``direct``
    (``--direct`` of a download), an API whose downloads read images straight
    from their stores where their locations allow."""
    driver, ctx = _open_driver(opts, env)
    opener = None
    if direct is not None and direct.schemes:
        opener = open_chooser(driver, ctx, direct, retry).open_direct
    return API(driver, retry=retry, progress=progress, direct=opener), ctx


def open_chooser(driver: Driver, ctx: RequestContext, options: DirectOptions,
                 retry: RetryPolicy = RetryPolicy()) -> SourceChooser:
    """The chooser of sources for ``driver``'s images, asking it for their
    locations (retried) and reading through it with ``ctx``'s credentials."""
    def locations(image_id: str) -> list:
        record = call_with_retries(lambda: driver.get(ctx, image_id, True), retry,
                                   f"get image {image_id}")
        return record.get("locations") or []
    return SourceChooser(lambda image_id: ServiceSource(driver, ctx, image_id), locations,
                         options)


def _open_driver(opts: ServiceOptions, env: Mapping[str, str]) -> tuple[Driver, RequestContext]:
    if opts.os_image_url and not opts.store:
        check_image_url(opts.os_image_url)
    if opts.store:
        return LocalDriver(opts.store), RequestContext.local_admin()
    has_token = bool(opts.os_auth_token or opts.os_auth_token_file)
    if has_token or (opts.os_image_url and not uses_keystone(opts, env)):
        if not (has_token and opts.os_image_url):
            missing = "--os-image-url / OS_IMAGE_URL" if has_token else \
                "--os-auth-token / OS_AUTH_TOKEN (or --os-auth-token-file / OS_AUTH_TOKEN_FILE)"
            raise ConfigError(f"token authentication needs {missing} as well")
        from .drivers.glance import GlanceDriver
        driver = GlanceDriver(opts.os_image_url, timeout=opts.timeout)
        ctx = RequestContext(auth_token=opts.os_auth_token,
                             auth_token_file=opts.os_auth_token_file)
        driver.check_credentials(ctx)
        return driver, ctx
    if uses_keystone(opts, env):
        return _open_cloud(opts)
    return LocalDriver(default_store_dir()), RequestContext.local_admin()


def _open_cloud(opts: ServiceOptions) -> tuple[Driver, RequestContext]:
    import openstack.config
    from openstack import exceptions as sdk_exc

    from .drivers.glance import GlanceDriver
    try:
        region = openstack.config.OpenStackConfig(load_envvars=True).get_one(
            cloud=opts.os_cloud, api_timeout=opts.timeout)
        session = region.get_session()
    except (sdk_exc.SDKException, KeyError, ValueError) as exc:
        where = f"cloud {opts.os_cloud!r}" if opts.os_cloud else "the OS_* variables"
        raise ConfigError(f"cannot use {where}: {exc}") from exc
    driver = GlanceDriver(opts.os_image_url or region.config.get("image_endpoint_override"),
                          timeout=opts.timeout, interface=region.get_interface() or "public",
                          region_name=region.get_region_name() or None)
    auth = region.config.get("auth") or {}
    ctx = RequestContext(session=session, project_id=auth.get("project_id"),
                         user_id=auth.get("user_id"))
    return driver, ctx


def add_direct_arguments(p: argparse.ArgumentParser) -> None:
    """Reading images straight from their store, where their location allows."""
    g = p.add_argument_group("direct reads from the image's store")
    g.add_argument("--direct", default="rbd", metavar="SCHEMES",
                   help="locations read directly: rbd, file, both (rbd,file) or none "
                        "(default rbd; file:// only when asked)")
    g.add_argument("--ceph-conf", metavar="FILE",
                   help="Ceph configuration (default $CEPH_CONF, else /etc/ceph/ceph.conf)")
    g.add_argument("--ceph-user", metavar="NAME",
                   help="Ceph client name without 'client.' (default $CEPH_USER, else admin)")
    g.add_argument("--ceph-keyring", metavar="FILE",
                   help="Ceph keyring (default: as Ceph finds it from the configuration)")


def direct_from_args(args) -> DirectOptions:
    return DirectOptions(DirectOptions.parse_schemes(args.direct),
                         CephOptions.from_env(args.ceph_conf, args.ceph_user, args.ceph_keyring))
