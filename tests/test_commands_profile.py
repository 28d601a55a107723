"""``imagefs profile show``: a stored boot profile, as tables or JSON."""

import json

from imagefs.cli import main
from imagefs.profiles import Profile, ProfileStore

A = "11111111-1111-4111-8111-111111111111"


def test_a_profile_as_tables_and_as_json(tmp_path, capsys):
    ProfileStore(tmp_path / "p").save(Profile(A, "v1", 4 << 20, [(0, 65536, 10),
                                                                 (1 << 20, 65536, 2500)],
                                              window_s=120.0, covered_s=2.5))
    assert main(["profile", "show", A, "--profile-dir", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "| boot time covered | 2.5 s of a 120 s window" in out
    assert "| bytes             | 131072 (128.0 KiB, 3.1% of 4.0 MiB)" in out
    assert "| 1048576 | 65536  | 2.500          |" in out
    assert main(["profile", "show", A, "--cache-dir", str(tmp_path), "-f", "json"]) == 1
    assert capsys.readouterr().err == \
        f"imagefs: no boot profile of image {A} in {tmp_path}/profiles\n"
    assert main(["profile", "show", A, "--profile-dir", str(tmp_path / "p"), "-f", "json"]) == 0
    [profile] = json.loads(capsys.readouterr().out)
    assert profile["image_id"] == A and profile["version"] == "v1"
