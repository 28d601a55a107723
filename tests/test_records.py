"""Image records: one dict shape for every driver, and what callers may set."""

from __future__ import annotations

import pytest

from imagefs import errors
from imagefs.records import (DELETED_STATES, FIELDS, make_record, split_info, tags_changed,
                             without_locations)


def test_make_record_has_every_field_and_only_custom_properties():
    raw = {"id": "i", "status": "active", "tags": ["b", "a"], "stores": "fs,ceph",
           "os_hidden": None, "protected": 0, "hw_disk_bus": "scsi", "self": "/v2/images/i",
           "os_glance_importing_to_stores": "", "properties": {"x": "1"},
           "direct_url": "rbd://secret"}
    record = make_record(raw)
    assert set(record) == set(FIELDS) | {"properties"}
    assert record["tags"] == ["a", "b"] and record["stores"] == ["fs", "ceph"]
    assert record["os_hidden"] is False and record["protected"] is False
    assert record["properties"] == {"x": "1", "hw_disk_bus": "scsi"}
    assert "direct_url" not in record and "locations" not in record


def test_locations_only_when_asked():
    raw = {"id": "i", "direct_url": "rbd://a/b/c/d"}
    record = make_record(raw, include_locations=True, locations=[{"url": "rbd://a/b/c/d"}])
    assert record["locations"] == [{"url": "rbd://a/b/c/d"}]
    assert record["direct_url"] == "rbd://a/b/c/d"
    assert "locations" not in without_locations(record)
    assert "direct_url" not in without_locations(record)


def test_split_info_fields_and_properties_both_ways():
    fields, props = split_info({"name": "n", "tags": ["t"], "properties": {"a": "1"},
                                "b": "2"})
    assert fields == {"name": "n", "tags": ["t"]} and props == {"a": "1", "b": "2"}


@pytest.mark.parametrize("info, match", [
    ({"size": 3}, "set by the image service"),
    ({"checksum": "x"}, "set by the image service"),
    ({"os_glance_x": "1"}, "set by the image service"),
    ({"tags": "t"}, "tags"),
    ({"tags": [""]}, "tags"),
    ({"properties": ["a"]}, "mapping"),
    ({"p": 3}, "must be a string"),
])
def test_split_info_refuses_what_a_caller_cannot_set(info, match):
    with pytest.raises(errors.ImageBadRequest, match=match):
        split_info(info)


def test_tags_changed_is_the_new_list():
    assert tags_changed(["a", "b"], ["c", "a"], ["b", "zz"]) == ["a", "c"]
    assert tags_changed([], [], []) == []


def test_deleted_states_are_not_readable_ones():
    assert "active" not in DELETED_STATES and "queued" not in DELETED_STATES
    assert {"deleted", "pending_delete", "killed"} == DELETED_STATES
