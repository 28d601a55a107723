"""``imagefs status``: the daemon's answer as two tables, or as JSON."""

import json

from fake_daemon import fake_daemon

from imagefs.cli import main

A = "11111111-1111-4111-8111-111111111111"
STATUS = {"service": "glance", "uptime_s": 5.0, "fetched_bytes": 300, "memory_hits": 4,
          "disk_hits": 5, "memory_bytes": 123, "cache_bytes": 65536, "cache_size": 1024,
          "disk_behind_blocks": 0, "disk_missed_blocks": 1, "reads": {"requests": 7},
          "images": [{"id": A, "name": "cirros", "size": 1000, "cached_bytes": 65536,
                      "fetched_bytes": 300, "path": "rbd", "profile_replay": None}]}


def test_status_prints_the_counters_then_the_images(tmp_path, capsys):
    with fake_daemon(tmp_path / "c", lambda request: STATUS) as seen:
        assert main(["status", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert seen == [{"op": "status"}]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["+--------------------+--------+", "| Field              | Value  |",
                         "+--------------------+--------+", "| service            | glance |"]
    assert lines[13] == "+--------------------+--------+"
    assert lines[15] == ("| ID                                   | Name   | Size | Cached | "
                         "Fetched | Path |")
    assert lines[17] == (f"| {A} | cirros | 1000 | 65536  | 300     | rbd  |")
    assert len(lines) == 19


def test_status_as_json_is_the_whole_answer(tmp_path, capsys):
    with fake_daemon(tmp_path / "c", lambda request: STATUS):
        assert main(["status", "m", "--cache-dir", str(tmp_path / "c"), "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_no_daemon_is_exit_2_in_one_line(tmp_path, capsys):
    assert main(["status", "m", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagefs: no imagefs daemon answers on ") and err.count("\n") == 1
