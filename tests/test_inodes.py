"""imagefs.inodes: inode numbers from image ids, and the record of unlisted ids."""

from __future__ import annotations

import errno
import uuid
from types import SimpleNamespace

import pytest

from imagefs.errors import FsError
from imagefs.inodes import (FIRST_IMAGE_INODE, INODES_FILE, KIND_DATA, KIND_LINK, InodeTable,
                            image_inode)


def _image(image_id: str) -> SimpleNamespace:
    return SimpleNamespace(id=image_id, ino=image_inode(image_id))


def test_an_image_inode_is_a_multiple_of_four_fixed_by_its_id():
    ids = [str(uuid.uuid4()) for _ in range(200)]
    inodes = [image_inode(i) for i in ids]
    assert inodes == [image_inode(i) for i in ids]  # the same for every daemon
    assert all(ino % 4 == 0 and FIRST_IMAGE_INODE <= ino < 1 << 63 for ino in inodes)
    assert len(set(inodes)) == len(ids)


def test_split_names_the_image_and_which_of_its_inodes(tmp_path):
    table = InodeTable(tmp_path)
    image = _image(str(uuid.uuid4()))
    table.add(image)
    assert table.split(image.ino + KIND_DATA) == (image, KIND_DATA)
    assert table.knows(image.ino + KIND_LINK)
    for ino in (image.ino + 4, 1):  # another image's; the root is not an image's
        with pytest.raises(FsError) as e:
            table.split(ino)
        assert e.value.errno == errno.ENOENT


def test_two_images_on_one_inode_are_an_error_never_a_wrong_file(tmp_path):
    table = InodeTable(tmp_path)
    first = _image(str(uuid.uuid4()))
    table.add(first)
    with pytest.raises(FsError) as e:
        table.add(SimpleNamespace(id=str(uuid.uuid4()), ino=first.ino))
    assert e.value.errno == errno.EIO and first.id in str(e.value)
    assert table.split(first.ino) == (first, 0)


def test_unlisted_ids_are_recorded_once_for_the_next_daemon(tmp_path):
    image_id = str(uuid.uuid4())
    table = InodeTable(tmp_path)
    table.note_unlisted(image_id)
    table.note_unlisted(image_id)
    assert (tmp_path / INODES_FILE).read_text() == image_id + "\n"
    (tmp_path / INODES_FILE).write_text("garbage\n" + image_id + "\nnot-an-id\n")
    successor = InodeTable(tmp_path)
    assert successor.recorded(image_inode(image_id) + KIND_DATA) == image_id
    assert successor.recorded(image_inode(str(uuid.uuid4()))) is None


def test_a_cache_directory_that_is_not_one_loses_only_the_record(tmp_path):
    (tmp_path / "file").write_text("")
    table = InodeTable(tmp_path / "file")  # opening <file>/inodes fails
    table.note_unlisted(image_id := str(uuid.uuid4()))
    assert table.recorded(image_inode(image_id)) == image_id
    assert InodeTable(tmp_path / "file").recorded(image_inode(image_id)) is None
