"""Prometheus metrics (``--metrics ADDR:PORT``), served by prometheus-client.

The mount's counters live where they are counted (``BlockReader.stats``,
the tiers, the FUSE adapter's errors); a collector reads them at each scrape,
so the read path pays nothing for metrics.  Fetch latency is the one
histogram, observed where a ranged read completes.  Off by default.

Metrics: ``imagefs_fetched_bytes_total``, ``imagefs_fetched_blocks_total``,
``imagefs_cache_hits_total{tier}``, ``imagefs_cache_misses_total``,
``imagefs_fetch_retries_total``, ``imagefs_errors_total{errno}``,
``imagefs_streams_opened_total``, ``imagefs_streams_open``,
``imagefs_disk_missed_blocks_total``,
``imagefs_cache_bytes{tier}``, ``imagefs_cache_size_bytes``,
``imagefs_fetch_seconds`` (a histogram).
"""

from __future__ import annotations

import logging
from collections import Counter

from .errors import ConfigError

log = logging.getLogger(__name__)

#: errno name -> count, of the errors the FUSE adapter answered (fuse_ops adds to it)
ERRORS: Counter = Counter()
#: seconds of each ranged read that succeeded (blocks adds to it when metrics are on)
FETCH_SECONDS = None


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics takes ADDR:PORT, e.g. 127.0.0.1:9464, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(address: str, blocks, memory, disk) -> None:
    """Start the metrics endpoint in a thread of its own (prometheus-client's)."""
    global FETCH_SECONDS
    from prometheus_client import CollectorRegistry, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    host, port = parse_address(address)
    registry = CollectorRegistry()
    FETCH_SECONDS = Histogram("imagefs_fetch_seconds", "Seconds a ranged read of a block took",
                              registry=registry,
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))

    class Collector:
        def collect(self):
            stats = blocks.stats
            for name, key, text in (
                    ("imagefs_fetched_bytes", "fetched_bytes", "Bytes fetched from sources"),
                    ("imagefs_fetched_blocks", "fetched_blocks", "Blocks fetched from sources"),
                    ("imagefs_fetch_retries", "retries", "Fetches tried again"),
                    ("imagefs_streams_opened", "streams", "Streams opened"),
                    ("imagefs_disk_missed_blocks", "disk_missed",
                     "Streamed blocks the disk tier fell behind on and never wrote")):
                yield CounterMetricFamily(name, text, value=stats[key])
            hits = CounterMetricFamily("imagefs_cache_hits", "Blocks served from a cache tier",
                                       labels=["tier"])
            hits.add_metric(["memory"], stats["memory_hits"])
            hits.add_metric(["disk"], stats["disk_hits"])
            yield hits
            yield CounterMetricFamily("imagefs_cache_misses", "Blocks fetched from a source",
                                      value=stats["fetched_blocks"])
            errors = CounterMetricFamily("imagefs_errors", "Errors answered to readers",
                                         labels=["errno"])
            for code, count in sorted(ERRORS.items()):
                errors.add_metric([code], count)
            yield errors
            yield GaugeMetricFamily("imagefs_streams_open", "Streams running",
                                    value=blocks.streams_open())
            size = GaugeMetricFamily("imagefs_cache_bytes", "Bytes held by a cache tier",
                                     labels=["tier"])
            size.add_metric(["memory"], memory.bytes_used)
            size.add_metric(["disk"], disk.bytes_used if disk is not None else 0)
            yield size
            yield GaugeMetricFamily("imagefs_cache_size_bytes", "The disk tier's bound",
                                    value=disk.max_bytes if disk is not None else 0)

    registry.register(Collector())
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    log.info("metrics at http://%s:%d/metrics", host, port)
