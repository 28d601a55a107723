"""imagefs.metrics on its own: the address it takes, and what a scrape reads
from a BlockReader and the cache tiers (a real reader over a fake source, and
fakes standing in for the counters' owners).

``serve`` starts prometheus-client's HTTP server; most tests here catch the
registry it is given instead (the scrape is ``registry.collect()``), and one
serves on a loopback port and shuts the server down again.
"""

from __future__ import annotations

import errno
import inspect
import os
import re
import socket
import urllib.request
from collections import Counter

import prometheus_client
import pytest
import trio
import trio.testing
from fake_source import FakeSource
from glance_server import free_port
from prometheus_client.parser import text_string_to_metric_families

from imagefs import metrics
from imagefs.blocks import BlockReader, ImageRef
from imagefs.cache import DiskCache, MemoryCache, TieredCache
from imagefs.errors import ConfigError
from imagefs.retry import RetryPolicy

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB


@pytest.fixture
def started(monkeypatch):
    """serve() without a server: each call's (port, addr, registry) is caught here.
    The module's globals are put back after the test."""
    monkeypatch.setattr(metrics, "FETCH_SECONDS", None)
    monkeypatch.setattr(metrics, "ERRORS", Counter())
    calls = []
    monkeypatch.setattr(prometheus_client, "start_http_server",
                        lambda port, addr, registry: calls.append((port, addr, registry)))
    return calls


class FakeBlocks:
    """What the collector asks of a BlockReader: ``stats`` and ``streams_open()``."""

    def __init__(self):
        self.stats = {"fetched_bytes": 0, "fetched_blocks": 0, "retries": 0, "streams": 0,
                      "disk_missed": 0, "memory_hits": 0, "disk_hits": 0}
        self.open = 0

    def streams_open(self) -> int:
        return self.open


class FakeTier:
    def __init__(self, bytes_used: int, max_bytes: int):
        self.bytes_used, self.max_bytes = bytes_used, max_bytes


def scrape(registry) -> dict[str, float]:
    """Every sample of a scrape: name, with its labels as the text format writes them."""
    values = {}
    for family in registry.collect():
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return values


def test_the_module_exports_an_error_counter_and_no_histogram_until_served():
    functions = {name for name, value in vars(metrics).items() if not name.startswith("_")
                 and inspect.isfunction(value) and value.__module__ == metrics.__name__}
    assert functions == {"parse_address", "serve"}
    assert {name for name in vars(metrics) if name.isupper()} == {"ERRORS", "FETCH_SECONDS"}
    assert isinstance(metrics.ERRORS, Counter)
    assert metrics.FETCH_SECONDS is None  # off by default: the read path observes nothing


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    (":65535", ("127.0.0.1", 65535)),        # no host: loopback, never every interface
    ("[::1]:9464", ("::1", 9464)),
    ("[::]:80", ("::", 80)),
    ("metrics.example:9100", ("metrics.example", 9100)),
])
def test_parse_address(text, address):
    assert metrics.parse_address(text) == address


@pytest.mark.parametrize("text", ["nowhere", "9464", "host:", "host:0", "host:65536",
                                  "host:-1", "host:94a4", "host: 9464", "[::1]", ""])
def test_a_bad_address_is_a_one_line_config_error_naming_it(text):
    with pytest.raises(ConfigError) as e:
        metrics.parse_address(text)
    message = str(e.value)
    assert "ADDR:PORT" in message and repr(text) in message and "\n" not in message


def test_serve_takes_the_parsed_address_and_sets_up_the_fetch_histogram(started):
    metrics.serve("[::1]:9555", FakeBlocks(), FakeTier(0, 0), None)
    [(port, addr, registry)] = started
    assert (port, addr) == (9555, "::1")
    assert metrics.FETCH_SECONDS is not None
    metrics.FETCH_SECONDS.observe(0.02)
    metrics.FETCH_SECONDS.observe(3.0)
    values = scrape(registry)
    assert values["imagefs_fetch_seconds_count"] == 2
    assert values["imagefs_fetch_seconds_sum"] == pytest.approx(3.02)
    assert values['imagefs_fetch_seconds_bucket{le="0.025"}'] == 1
    assert values['imagefs_fetch_seconds_bucket{le="2.5"}'] == 1
    assert values['imagefs_fetch_seconds_bucket{le="5.0"}'] == 2


def test_a_bad_address_is_refused_before_anything_is_served(started):
    with pytest.raises(ConfigError):
        metrics.serve("nowhere", FakeBlocks(), FakeTier(0, 0), None)
    assert started == [] and metrics.FETCH_SECONDS is None


def test_the_docstring_names_every_metric_a_scrape_has(started):
    metrics.serve("127.0.0.1:9464", FakeBlocks(), FakeTier(0, 0), FakeTier(0, 0))
    registry = started[0][2]
    scraped = {family.name + ("_total" if family.type == "counter" else "")
               for family in registry.collect()}
    documented = set(re.findall(r"``(imagefs_\w+)", metrics.__doc__))
    assert scraped == documented


def test_a_scrape_reads_the_counters_as_they_are_now(started):
    blocks, memory, disk = FakeBlocks(), FakeTier(5 * BS, 8 * MiB), FakeTier(7 * BS, 64 * MiB)
    metrics.serve("127.0.0.1:9464", blocks, memory, disk)
    registry = started[0][2]
    before = scrape(registry)
    assert before["imagefs_fetched_bytes_total"] == 0
    assert before['imagefs_cache_bytes{tier="memory"}'] == 5 * BS
    assert before['imagefs_cache_bytes{tier="disk"}'] == 7 * BS
    assert before["imagefs_cache_size_bytes"] == 64 * MiB
    assert not any(name.startswith("imagefs_errors_total") for name in before)

    blocks.stats.update(fetched_bytes=3 * BS + 5, fetched_blocks=4, retries=2, streams=3,
                        disk_missed=6, memory_hits=11, disk_hits=13)
    blocks.open = 2
    memory.bytes_used, disk.bytes_used = BS, 9 * BS
    metrics.ERRORS["ENOENT"] += 2
    metrics.ERRORS["EIO"] += 1
    after = scrape(registry)
    assert after["imagefs_fetched_bytes_total"] == 3 * BS + 5
    assert after["imagefs_fetched_blocks_total"] == 4
    assert after["imagefs_cache_misses_total"] == 4  # a miss is a block fetched
    assert after["imagefs_fetch_retries_total"] == 2
    assert after["imagefs_streams_opened_total"] == 3
    assert after["imagefs_streams_open"] == 2
    assert after["imagefs_disk_missed_blocks_total"] == 6
    assert after['imagefs_cache_hits_total{tier="memory"}'] == 11
    assert after['imagefs_cache_hits_total{tier="disk"}'] == 13
    assert after['imagefs_cache_bytes{tier="memory"}'] == BS
    assert after['imagefs_cache_bytes{tier="disk"}'] == 9 * BS
    assert after['imagefs_errors_total{errno="ENOENT"}'] == 2
    assert after['imagefs_errors_total{errno="EIO"}'] == 1


def test_without_a_disk_tier_its_bytes_and_bound_are_zero(started):
    metrics.serve("127.0.0.1:9464", FakeBlocks(), FakeTier(3 * BS, 8 * MiB), None)
    values = scrape(started[0][2])
    assert values['imagefs_cache_bytes{tier="disk"}'] == 0
    assert values["imagefs_cache_size_bytes"] == 0
    assert values['imagefs_cache_bytes{tier="memory"}'] == 3 * BS


def test_a_scrape_of_a_block_reader_over_a_fake_source(started, tmp_path):
    data = bytes(range(256)) * (8 * BS // 256)
    source = FakeSource(data)
    memory, disk = MemoryCache(4 * MiB), DiskCache(tmp_path / "cache", 64 * MiB)
    ref = ImageRef("img", "v1", len(data))
    readers = []

    async def main():
        async with trio.open_nursery() as nursery:
            reader = BlockReader(lambda *_: source, TieredCache(memory, disk), block_size=BS,
                                 fetch_threads=2, read_deadline=5.0,
                                 retry=RetryPolicy(deadline=5.0), nursery=nursery)
            readers.append(reader)
            metrics.serve("127.0.0.1:9464", reader, memory, disk)
            for index in (5, 1, 3):  # scattered: one ranged read per block, no stream
                assert await reader.read(ref, index * BS, 10) == data[index * BS:][:10]
            assert await reader.read(ref, 1 * BS + 100, 10) == data[BS + 100:][:10]
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.02))
        values = scrape(started[0][2])
    finally:
        disk.close()
    stats = readers[0].stats
    assert source.requests == 3 and source.sent == 3 * BS
    assert values["imagefs_fetched_bytes_total"] == stats["fetched_bytes"] == 3 * BS
    assert values["imagefs_fetched_blocks_total"] == stats["fetched_blocks"] == 3
    assert values["imagefs_cache_misses_total"] == 3
    assert values['imagefs_cache_hits_total{tier="memory"}'] == stats["memory_hits"] == 1
    assert values['imagefs_cache_hits_total{tier="disk"}'] == 0
    assert values["imagefs_streams_opened_total"] == values["imagefs_streams_open"] == 0
    assert values["imagefs_fetch_retries_total"] == 0
    assert values["imagefs_fetch_seconds_count"] == 3  # one per ranged read
    assert values['imagefs_cache_bytes{tier="memory"}'] == memory.bytes_used == 3 * BS
    assert values["imagefs_cache_size_bytes"] == 64 * MiB


@pytest.fixture
def served(monkeypatch):
    """serve() with its real server, shut down after the test."""
    monkeypatch.setattr(metrics, "FETCH_SECONDS", None)
    monkeypatch.setattr(metrics, "ERRORS", Counter())
    real, servers = prometheus_client.start_http_server, []

    def start(*args, **kwargs):
        server, thread = real(*args, **kwargs)
        servers.append((server, thread))
        return server, thread

    monkeypatch.setattr(prometheus_client, "start_http_server", start)
    yield servers
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_endpoint_serves_the_text_format_on_loopback(served):
    blocks = FakeBlocks()
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}", blocks, FakeTier(2 * BS, 8 * MiB), None)
    blocks.stats["fetched_bytes"] = 12345
    metrics.ERRORS["ESTALE"] += 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["imagefs_fetched_bytes"].samples[0].value == 12345
    [estale] = families["imagefs_errors"].samples
    assert estale.labels == {"errno": "ESTALE"} and estale.value == 1
    assert families["imagefs_fetch_seconds"].type == "histogram"
    assert not any(name.startswith(("python_", "process_")) for name in families)  # ours only


def test_a_port_in_use_is_a_one_line_config_error(served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError) as e:
            metrics.serve(address, FakeBlocks(), FakeTier(0, 0), None)
    assert str(e.value) == f"cannot serve metrics on {address}: {os.strerror(errno.EADDRINUSE)}"
    assert "\n" not in str(e.value) and served == []
