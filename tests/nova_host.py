"""Nova's own libvirt image code, unchanged, set up as on a compute host.

For tests/test_nova*.py and scripts/nova_bench.py.  ``NovaHost(instances_path)``
sets Nova's configuration (``instances_path``, ``[libvirt] images_type =
qcow2``, the ``[image_cache]`` options) and runs Nova's privsep calls in
this process, as root, the way Nova's own tests do
(``nova.tests.fixtures.PrivsepFixture`` patches ``sys_admin_pctxt.client_mode``
to False; that module needs testtools, so the same patch is made here).

``spawn_disk`` is what the libvirt driver's ``_create_and_inject_local_root``
does for an image-backed root disk: ``Backend(use_cow=True).by_name(instance,
'disk').cache(fetch_func=..., context=..., filename=sha1(image id),
image_id=..., size=...)``.  ``nova_fetch`` is Nova's own fetch_func
(``libvirt_utils.fetch_image``: ``images.fetch_to_raw``, a whole download
through the image API, deep inspection, ``qemu-img info``), with the image
API answered by imagefs's ``API`` (it has ``nova.image.api.API``'s methods)
instead of Nova's Glance client, which needs a Keystone session.
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from pathlib import Path
from unittest import mock

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import nova.conf
    import nova.privsep
    from nova import context as nova_context
    from nova import objects
    from nova.virt import images
    from nova.virt.libvirt import imagebackend, imagecache
    from nova.virt.libvirt import utils as libvirt_utils

CONF = nova.conf.CONF
_configured = False


def base_name(image_id: str) -> str:
    return imagecache.get_cache_fname(image_id)


class ImageAPI:
    """``nova.virt.images.IMAGE_API`` answered by imagefs's API as ``ctx``."""

    def __init__(self, api, ctx):
        self.api, self.ctx = api, ctx

    def get(self, context, image_href, **kwargs):
        return self.api.get(self.ctx, image_href)

    def download(self, context, image_href, dest_path=None, trusted_certs=None):
        return self.api.download(self.ctx, image_href, dest_path=dest_path)


class NovaHost:
    def __init__(self, instances_path: Path, **image_cache):
        global _configured
        if not _configured:
            CONF([], project="nova", default_config_files=[])
            objects.register_all()
            _configured = True
        self.instances_path = Path(instances_path)
        self.base_dir = self.instances_path / "_base"
        self.base_dir.mkdir(parents=True, exist_ok=True)
        CONF.set_override("instances_path", str(self.instances_path))
        CONF.set_override("images_type", "qcow2", group="libvirt")
        for key, value in image_cache.items():
            CONF.set_override(key, value, group="image_cache")
        self.context = nova_context.RequestContext(user_id="u", project_id="p")

    @staticmethod
    @contextlib.contextmanager
    def privsep_in_process():
        with mock.patch.object(nova.privsep.sys_admin_pctxt, "client_mode", False):
            yield

    def instance(self, image_id: str, n: int = 1) -> objects.Instance:
        return objects.Instance(id=n, uuid=str(uuid.uuid4()), image_ref=image_id,
                                kernel_id=None, ramdisk_id=None, host=CONF.host,
                                task_state=None, vm_state="active", os_type=None)

    def spawn_disk(self, instance, image_id: str, size: int, fetch_func) -> Path:
        """Nova's image-backed root disk for ``instance`` (its path)."""
        disk = imagebackend.Backend(use_cow=True).by_name(instance, "disk")
        with self.privsep_in_process():
            disk.cache(fetch_func=fetch_func, context=self.context,
                       filename=base_name(image_id), image_id=image_id, size=size)
        return Path(disk.path)

    @staticmethod
    def nova_fetch(api, ctx):
        """Nova's own fetch_func, downloading through ``api`` as ``ctx``."""
        def fetch(context, target, image_id, trusted_certs=None):
            with mock.patch.object(images, "IMAGE_API", ImageAPI(api, ctx)):
                libvirt_utils.fetch_image(context, target, image_id, trusted_certs)
        return fetch

    def cache_pass(self, instances) -> imagecache.ImageCacheManager:
        """One pass of Nova's image cache manager over ``_base`` with ``instances``
        running here.  Only the block device mappings (a database query) are
        stubbed: these instances have none."""
        manager = imagecache.ImageCacheManager()
        with self.privsep_in_process(), mock.patch.object(
                objects.BlockDeviceMappingList, "bdms_by_instance_uuid", return_value={}):
            manager.update(self.context, instances)
        return manager

    def backing_file(self, disk: Path) -> str | None:
        """The backing file of ``disk`` as Nova reads it (``qemu-img info``)."""
        return images.qemu_img_info(str(disk)).backing_file

    def virtual_size(self, path: Path) -> int:
        return images.qemu_img_info(str(path)).virtual_size

    def format_of(self, path: Path) -> str:
        """Nova's format inspection of ``path`` (and its safety check)."""
        inspector = images.get_image_format(str(path))
        inspector.safety_check()
        return str(inspector)

