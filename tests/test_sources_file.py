"""file:// locations read directly (imagefs.sources.file): only the file itself,
of the image's size, and exact bytes or an error."""

from __future__ import annotations

import os

import pytest

from imagefs import errors
from imagefs.sources import FILE
from imagefs.sources.file import CHUNK, FileSource, path_of

DATA = os.urandom(CHUNK + 12345)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "images" / "img"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def test_path_of():
    assert path_of("file:///var/lib/glance/images/x") == "/var/lib/glance/images/x"
    assert path_of("file://localhost/a%20b") == "/a b"
    assert path_of("file://otherhost/x") is None
    assert path_of("rbd://a/b/c/d") is None
    assert path_of("file://") is None


def test_reads_are_exact_and_clipped_at_the_end(image):
    source = FileSource.open(f"file://{image}", len(DATA))
    try:
        assert source.kind == FILE and str(image) in repr(source)
        assert source.read(0, 10) == DATA[:10]
        assert source.read(len(DATA) - 5, 100) == DATA[-5:]
        assert source.read(len(DATA), 100) == b""
        chunks = list(source.stream(3))
        assert b"".join(chunks) == DATA[3:] and len(chunks) == 2
        assert b"".join(source.stream(100, 200)) == DATA[100:200]
    finally:
        source.close()
    source.close()  # twice is fine
    assert source.fd == -1


@pytest.mark.parametrize("how", ["relative", "symlink", "dotdot", "size", "directory",
                                 "missing", "host"])
def test_what_is_not_the_image_itself_is_unusable(image, tmp_path, how):
    size = len(DATA)
    if how == "relative":
        url = "file:images/img"
    elif how == "symlink":
        (tmp_path / "link").symlink_to(image.parent)
        url = f"file://{tmp_path}/link/img"
    elif how == "dotdot":
        url = f"file://{image.parent}/../images/img"
    elif how == "size":
        url, size = f"file://{image}", size + 1
    elif how == "directory":
        url = f"file://{image.parent}"
    elif how == "missing":
        url = f"file://{image}.gone"
    else:
        url = f"file://elsewhere{image}"
    with pytest.raises(errors.Unusable):
        FileSource.open(url, size)
    assert sorted(os.listdir(image.parent)) == ["img"]


def test_a_file_that_shrinks_under_it_is_an_error_not_short_bytes(image):
    source = FileSource.open(f"file://{image}", len(DATA))
    try:
        os.truncate(image, 100)
        with pytest.raises(errors.BackendUnavailable, match="changed"):
            source.read(50, 100)
    finally:
        source.close()
