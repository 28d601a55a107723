"""``imagefs image``: the parts that need no service (a fake API)."""

import pytest

from imagefs.commands.image import _image_id, _merged
from imagefs.errors import ConfigError, ImageNotFound

A = "11111111-1111-4111-8111-111111111111"


class FakeAPI:
    def __init__(self, records):
        self.records = records
        self.asked = []

    def get_all(self, ctx, name=None, status="active", limit=None):
        self.asked.append(name)
        return iter([r for r in self.records if r["name"] == name][:limit])


def test_an_id_or_uri_is_taken_as_given_without_asking():
    api = FakeAPI([])
    for text in (A, A.replace("-", "").upper(), "glance://x/y", "imagefs-local:z"):
        assert _image_id(api, None, text) == text
    assert api.asked == []


def test_a_name_is_the_one_image_that_has_it():
    api = FakeAPI([{"id": "i1", "name": "cirros"}, {"id": "i2", "name": "a"},
                   {"id": "i3", "name": "a"}])
    assert _image_id(api, None, "cirros") == "i1"
    with pytest.raises(ConfigError, match="more than one image is named 'a': i2, i3; give"):
        _image_id(api, None, "a")
    with pytest.raises(ImageNotFound, match="no image named 'b'"):
        _image_id(api, None, "b")


def test_hidden_images_merge_into_the_listing_in_its_order():
    shown = [{"id": "a", "size": 9}, {"id": "b", "size": 5}, {"id": "c", "size": None}]
    hidden = [{"id": "h", "size": 7}, {"id": "i", "size": None}]
    merged = _merged(shown, hidden, "size", "desc", None)
    assert [r["id"] for r in merged] == ["a", "h", "b", "i", "c"]
    assert [r["id"] for r in _merged(list(reversed(shown)), list(reversed(hidden)), "size",
                                     "asc", 3)] == ["c", "i", "b"]
