"""What the block cache's test files share: block keys and the warnings logged."""

from __future__ import annotations

import logging

from imagefs.cache import BlockKey


def key(i, version="v1", image="img", block_size=64 * 1024):
    return BlockKey(image, version, block_size, i)


def warnings(caplog) -> list[str]:
    return [r.message for r in caplog.records if r.levelno >= logging.WARNING]
