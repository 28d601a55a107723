"""The daemon's side of ``imagefs profile record``: start a recording, save it now.

``profile-record`` (``{"image": ID, "window": S}``) makes the mount record the
image's reads from now on, whatever its ``--profile-window``;
``profile-save`` (``{"image": ID, "publish": bool}``) saves that recording at
once, into the profile directory and, with ``publish``, through the image
service (``imagefs.profiles.BootProfiles.save_now``).  Both run on the mount's
trio thread.  The command, which boots the image in qemu between the two, is
``imagefs.commands.profile_record``.
"""

from __future__ import annotations

from .ids import is_image_id

#: Seconds the daemon's recording outlasts the window (the save comes before).
MARGIN = 30.0


class ProfileOps:
    """Answers ``profile-record`` and ``profile-save``."""

    OPS = ("profile-record", "profile-save")

    def __init__(self, fs, profiles):
        self.fs, self.profiles = fs, profiles

    async def handle(self, request: dict) -> dict:
        image_id = str(request.get("image", ""))
        if not is_image_id(image_id):
            return {"error": f"not an image id: {image_id!r}"}
        if request["op"] == "profile-save":
            return await self.profiles.save_now(image_id, bool(request.get("publish")))
        try:
            window = float(request.get("window", 120.0))
        except (TypeError, ValueError):
            return {"error": f"not a window in seconds: {request.get('window')!r}"}
        image = await self.fs.image_ref(image_id)
        self.profiles.record(image, window + MARGIN)
        return {"image": image.id, "version": image.version, "size": image.size}
