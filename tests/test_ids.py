"""The one check of image ids, and its lenient variant for what users type."""

import uuid

import pytest

from imagefs.ids import is_image_id, is_uuid_like

CANONICAL = "0f1e2d3c-4b5a-4697-8887-a9b8c7d6e5f4"


def test_canonical_ids():
    assert is_image_id(CANONICAL)
    assert is_image_id(str(uuid.uuid4()))


@pytest.mark.parametrize("text", [CANONICAL.upper(), CANONICAL.replace("-", ""),
                                  CANONICAL + "\n", " " + CANONICAL, CANONICAL[:-1],
                                  CANONICAL + "0", CANONICAL.replace("f", "g"), "", None, 42,
                                  "../" + CANONICAL])
def test_not_canonical_ids(text):
    assert not is_image_id(text)


@pytest.mark.parametrize("text", [CANONICAL, CANONICAL.upper(), CANONICAL.replace("-", ""),
                                  uuid.uuid4().hex.upper()])
def test_uuid_like_takes_any_case_and_optional_dashes(text):
    assert is_uuid_like(text)


@pytest.mark.parametrize("text", [CANONICAL + "\n", CANONICAL[:-1], "not-an-id", "", None,
                                  "imagefs-local:" + CANONICAL, CANONICAL.replace("f", "g")])
def test_not_uuid_like(text):
    assert not is_uuid_like(text)
