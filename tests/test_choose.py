"""Which source serves an image (imagefs.sources.choose), against callables in
memory and real file:// locations: the direct source where it can serve, the
service otherwise, and the service for good once the direct one fails."""

from __future__ import annotations

import logging
import os

import pytest
from fake_source import FakeSource

from imagefs import errors
from imagefs.sources import FILE
from imagefs.sources.choose import DirectOptions, SourceChooser, _Fallback

DATA = os.urandom(200_000)
FILES = DirectOptions(schemes=frozenset({FILE}))


class Service(FakeSource):
    kind = "glance"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(DATA)
    return path


def chooser(locations, options=FILES, service=None):
    service = service or Service(DATA)
    asked = []

    def locations_of(image_id):
        asked.append(image_id)
        if isinstance(locations, Exception):
            raise locations
        return locations
    chosen = SourceChooser(lambda image_id: service, locations_of, options)
    return chosen, service, asked


def test_a_file_location_is_read_directly(image):
    chosen, service, asked = chooser([{"url": "rbd://x/y/z/s"}, {"url": f"file://{image}"}])
    source = chosen.open("id", len(DATA))
    try:
        assert source.kind == FILE and asked == ["id"]
        assert source.read(5, 10) == DATA[5:15]
        assert b"".join(source.stream(0)) == DATA
        assert service.requests == 0
    finally:
        source.close()
    assert chosen.open_direct(None, "id", len(DATA)).kind == FILE


@pytest.mark.parametrize("locations", [
    [],
    [{"url": "file:///nonexistent/img"}],
    errors.ImageNotAuthorized("no locations for you"),
])
def test_otherwise_the_service(locations, caplog):
    chosen, service, _ = chooser(locations)
    with caplog.at_level(logging.WARNING):
        assert chosen.open("id", len(DATA)) is service
        assert chosen.open_direct(None, "id", len(DATA)) is None
    if locations:  # the reason, logged
        assert "reading through the image service" in caplog.text


def test_no_schemes_or_no_direct_asks_for_no_locations(image):
    chosen, service, asked = chooser([{"url": f"file://{image}"}], DirectOptions(frozenset()))
    assert chosen.open("id", len(DATA)) is service and asked == []
    chosen, service, asked = chooser([{"url": f"file://{image}"}])
    assert chosen.open("id", len(DATA), direct=False) is service and asked == []


def test_schemes_not_allowed_are_passed_over(image):
    chosen, service, _ = chooser([{"url": f"file://{image}"}],
                                 DirectOptions(frozenset({"rbd"})))
    assert chosen.open("id", len(DATA)) is service


class Vanishing(FakeSource):
    kind = FILE

    def read(self, offset, length, timeout=None):
        raise errors.Unusable("the file went away")

    def stream(self, offset, end=None, timeout=None):
        yield DATA[offset:offset + 10]
        raise errors.Unusable("the file went away")


def test_a_direct_source_that_turns_unusable_gives_way_for_good(caplog):
    service = Service(DATA)
    direct = Vanishing(DATA)
    closed = []
    direct.close = lambda: closed.append(True)
    source = _Fallback("id", direct, service)
    with caplog.at_level(logging.WARNING):
        assert b"".join(source.stream(100)) == DATA[100:]  # resumed at 110 by the service
        assert source.kind == "glance"
        assert source.read(0, 5) == DATA[:5]
    assert closed == [True] and service.log == [(110, None), (0, 5)]
    assert caplog.text.count("reading through the image service from now on") == 1


def test_the_services_own_unusable_is_raised():
    class Broken(Service):
        def read(self, offset, length, timeout=None):
            raise errors.Unusable("odd")
    source = _Fallback("id", Broken(DATA), Broken(DATA))
    with pytest.raises(errors.Unusable):
        source.read(0, 1)


def test_direct_schemes_are_parsed():
    assert DirectOptions.parse_schemes("rbd, file") == {"rbd", "file"}
    assert DirectOptions.parse_schemes("none") == frozenset()
    for bad in ("", "nfs", "rbd,none"):
        with pytest.raises(errors.ConfigError, match="--direct takes"):
            DirectOptions.parse_schemes(bad)


def test_describe():
    assert "off" in SourceChooser(None, None, DirectOptions(frozenset())).describe()
    assert "file:// locations" in SourceChooser(None, None, FILES).describe()
