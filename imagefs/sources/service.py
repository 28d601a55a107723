"""The image service's own data API as a ``Source``: a driver, a context, an id."""

from __future__ import annotations

from typing import Iterator

from ..context import RequestContext
from ..drivers.base import Driver


class ServiceSource:
    def __init__(self, driver: Driver, ctx: RequestContext, image_id: str):
        self.driver, self.ctx, self.image_id = driver, ctx, image_id
        self.kind = driver.name

    def __repr__(self) -> str:
        return f"ServiceSource({self.kind}, {self.image_id})"

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        return self.driver.read(self.ctx, self.image_id, offset, length, timeout=timeout)

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        return self.driver.open_stream(self.ctx, self.image_id, offset, end, timeout=timeout)

    def close(self) -> None:
        pass
