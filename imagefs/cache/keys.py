from __future__ import annotations

import dataclasses
import hashlib


@dataclasses.dataclass(frozen=True)
class BlockKey:
    image_id: str
    version: str       # os_hash_value or checksum: changes when the bytes do
    block_size: int
    index: int

    def digest(self) -> bytes:
        """The key's sha256: the disk tier checks it in each block's header."""
        text = f"{self.image_id}:{self.version}:{self.block_size}:{self.index}"
        return hashlib.sha256(text.encode()).digest()


def image_version(record: dict) -> str:
    """What identifies an image's bytes: its sha512 or md5, else size and dates."""
    return (record.get("os_hash_value") or record.get("checksum")
            or f"{record.get('size')}@{record.get('created_at')}@{record.get('updated_at')}")
