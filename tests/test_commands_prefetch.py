"""``imagefs prefetch``: names to ids, the job polled until it ends, a line of figures."""

import os

import pytest
from fake_daemon import fake_daemon

from imagefs.cli import main
from imagefs.commands.prefetch import image_id
from imagefs.errors import ConfigError

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"


def test_an_id_or_a_by_name_link_of_the_mount(tmp_path):
    (tmp_path / "by-name").mkdir()
    os.symlink(f"../{B}", tmp_path / "by-name" / "cirros")
    assert image_id(tmp_path, A) == A
    assert image_id(tmp_path, "cirros") == B
    with pytest.raises(ConfigError, match="'nope' is neither an image id nor a name under"):
        image_id(tmp_path, "nope")


def job(number, finished, **figures):
    return {"job": number, "image": A, "finished": finished, "failure": None, "blocks": 4,
            "bytes": 4 << 20, "done": 4 if finished else 1, "cached": 1, "fetched": 3 << 20,
            "failed": 0, "seconds": 2.0, **figures}


def test_the_job_is_polled_until_finished_and_its_figures_printed(tmp_path, capsys):
    polls = []

    def answer(request):
        if request["op"] == "prefetch":
            return job(1, False)
        polls.append(request)
        return job(1, len(polls) >= 2)
    with fake_daemon(tmp_path / "c", answer) as seen:
        code = main(["prefetch", str(tmp_path), A, "--profile-only", "--cache-dir",
                     str(tmp_path / "c")])
    assert code == 0
    assert seen[0] == {"op": "prefetch", "image": A, "profile_only": True}
    assert polls == [{"op": "prefetch-status", "job": 1}] * 2
    assert capsys.readouterr().out == (
        f"{A}: 4 blocks (4.0 MiB, its boot profile): 1 cached already, 3.0 MiB fetched in "
        "2.0 s (1.5 MiB/s)\n")


def test_a_failed_job_is_exit_1_with_its_reason(tmp_path, capsys):
    with fake_daemon(tmp_path / "c", lambda r: job(1, True, failed=2)):
        code = main(["prefetch", str(tmp_path), A, "--cache-dir", str(tmp_path / "c")])
    assert code == 1
    out, err = capsys.readouterr()
    assert out.endswith(", 2 failed\n")
    assert err == f"imagefs: prefetch of {A} failed: 2 blocks could not be fetched\n"
