"""imagefs as a hypervisor host's service, step by step: a shell transcript.

Starts the test Glance on loopback (tests/glance_server.py), uploads an
image, and runs, printing each command and what it printed:

  1. an fstab line mounted with ``mount -a`` (mount.imagefs on mount(8)'s path)
  2. a read as a user in the allowed group, and one refused outside it
  3. ``READY=1`` (and ``STATUS=``) on a notify socket, as systemd would get them
  4. ``imagefs status -f json`` before and after reading the image, beside the
     server's own count of the bytes it sent
  5. a scrape of ``/metrics``
  6. ``imagefs cache list`` and ``evict``
  7. ``by-name``

The Keystone token expiry (a password mount that outlives its tokens) takes
a Keystone with 60 s tokens: ``scripts/test tests/test_keystone.py -k
outlives``.  Each step is also a test in the suite (README, "Tests").
Needs root (mount, users, /sbin/mount.imagefs).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from glance_server import GlanceServer, free_port  # noqa: E402

GROUP, READER, OUTSIDER = "imagefs-readers", "imagefs-reader", "imagefs-outsider"
HELPER = Path("/sbin/mount.imagefs")


def sh(command: str, env: dict | None = None) -> str:
    print(f"$ {command}", flush=True)
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300)
    text = (out.stdout + out.stderr).rstrip()
    if text:
        print(text, flush=True)
    if out.returncode:
        print(f"[exit {out.returncode}]", flush=True)
    return out.stdout


def note(text: str) -> None:
    print(f"\n# {text}", flush=True)


def users() -> None:
    subprocess.run(f"getent group {GROUP} >/dev/null || groupadd --system {GROUP}",
                   shell=True, check=True)
    for user, extra in ((READER, f"--groups {GROUP}"), (OUTSIDER, "")):
        subprocess.run(f"id {user} >/dev/null 2>&1 || useradd --system --no-create-home "
                       f"--shell /bin/false {extra} {user}", shell=True, check=True)


def listen(path: Path, heard: list[str]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)

    def run():
        while True:
            try:
                heard.append(sock.recv(4096).decode())
            except OSError:
                return
            if "STOPPING=1" in heard[-1]:
                return
    threading.Thread(target=run, daemon=True).start()


def main() -> int:
    if os.geteuid() != 0:
        print("host-transcript: needs root", file=sys.stderr)
        return 2
    users()
    imagefs = f"{shlex.quote(sys.executable)} -m imagefs"
    with tempfile.TemporaryDirectory(prefix="imagefs-host.") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        with GlanceServer(work / "glance") as glance:
            env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
            src = work / "cirros.img"
            src.write_bytes(os.urandom(24 << 20))
            out = sh(f"{imagefs} image create cirros-demo --file {src} --disk-format raw "
                     "--container-format bare --private -f value -c id", env)
            image_id = out.split()[-1]
            mnt, cache = work / "images", work / "cache"
            mnt.mkdir()
            token = work / "token"
            token.write_text("alice-token\n")
            token.chmod(0o600)
            port = free_port()
            fstab = work / "fstab"
            fstab.write_text(
                f"glance {mnt} imagefs _netdev,os_image_url={glance.url},"
                f"os_auth_token_file={token},cache_dir={cache},allow_other,gid={GROUP},"
                f"file_mode=0440,metrics=127.0.0.1:{port} 0 0\n")
            linked = not HELPER.exists()
            if linked:
                HELPER.symlink_to(Path(sys.executable).parent / "mount.imagefs")
            try:
                note("1. an fstab line, mounted by mount -a")
                sh(f"cat {fstab}")
                sh(f"mount -T {fstab} -a -t imagefs && findmnt -n {mnt}")
                note("2. a user of the group reads; a user outside it is refused")
                sh(f"ls -l {mnt}/{image_id}/")
                sh(f"id {READER}; runuser -u {READER} -- head -c 1M {mnt}/{image_id}/data "
                   f"| cmp - <(head -c 1M {src}) && echo same bytes")
                sh(f"id {OUTSIDER}; runuser -u {OUTSIDER} -- head -c 1 {mnt}/{image_id}/data")
                note("4. status before and after reading the image, and what Glance sent")
                sh(f"curl -s -X POST {glance.url}/_test/reset >/dev/null; "
                   f"{imagefs} status {mnt} -f json")
                sh(f"cat {mnt}/{image_id}/data | cmp - {src} && echo same bytes")
                sh(f"{imagefs} status {mnt} -f json")
                sh(f"curl -s {glance.url}/_test/stats; echo")
                note("5. Prometheus metrics")
                sh(f"curl -s http://127.0.0.1:{port}/metrics | grep -E "
                   "'^imagefs_(fetched_bytes_total|cache_bytes|cache_hits_total|cache_misses_total)'")
                note("6. the cache: list, evict, list")
                sh(f"{imagefs} cache list --mount {mnt}")
                sh(f"{imagefs} cache evict {image_id} --mount {mnt}")
                sh(f"{imagefs} cache list --mount {mnt}")
                note("7. by-name")
                sh(f"ls -l {mnt}/by-name/ && readlink {mnt}/by-name/cirros-demo && "
                   f"cmp {mnt}/by-name/cirros-demo/data {src} && echo same bytes")
                sh(f"umount {mnt}")
            finally:
                if os.path.ismount(mnt):
                    subprocess.run(["umount", "-l", str(mnt)])
                if linked:
                    HELPER.unlink()
            note("3. systemd's notifications (Type=notify), on a socket of our own")
            notify = work / "notify.sock"
            heard: list[str] = []
            listen(notify, heard)
            mnt2 = work / "images2"
            mnt2.mkdir()
            sh(f"NOTIFY_SOCKET={notify} {imagefs} mount {mnt2} --cache-dir {work / 'cache2'}"
               f" && ls {mnt2} | head -3 && {imagefs} umount {mnt2}", env)
            for _ in range(50):
                if heard and "STOPPING=1" in heard[-1]:
                    break
                time.sleep(0.1)
            for message in heard:
                print("notify: " + message.replace("\n", " | "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
