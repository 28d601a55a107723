"""CollapseRepeats on a handler that keeps its records, under a fake clock."""

from __future__ import annotations

import logging

import pytest

from imagefs.logflood import CollapseRepeats


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


@pytest.fixture
def flood():
    """(logger, handler's lines, the clock's list to move, the filter)."""
    now = [1000.0]
    handler = Keep()
    logger = logging.getLogger("imagefs.test-flood")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    collapse = CollapseRepeats(window=10.0, clock=lambda: now[0]).install([handler])
    yield logger, handler.lines, now, collapse
    collapse.remove()
    logger.removeHandler(handler)


def test_the_first_warning_passes_and_repeats_become_one_count_after_the_window(flood):
    log, lines, now, _ = flood
    for block in range(38):
        log.warning("disk cache: block %d is corrupt", block)
        now[0] += 0.1
    assert lines == ["WARNING: disk cache: block 0 is corrupt"]
    now[0] = 1000.0 + 10.5
    log.warning("disk cache: block %d is corrupt", 99)  # a new window opens with it
    assert lines == ["WARNING: disk cache: block 0 is corrupt",
                     ("WARNING: disk cache: block 37 is corrupt "
                      "(repeated 37 times in the last 10 s)"),
                     "WARNING: disk cache: block 99 is corrupt"]


def test_a_flood_that_stopped_is_counted_at_the_next_record_of_any_kind(flood):
    log, lines, now, _ = flood
    log.warning("stalled")
    log.warning("stalled")
    now[0] += 11
    log.info("something else")
    assert lines == ["WARNING: stalled", "WARNING: stalled (repeated 1 time in the last 10 s)",
                     "INFO: something else"]


def test_info_lines_and_other_warnings_pass_and_flush_counts_an_open_window(flood):
    log, lines, now, collapse = flood
    for _ in range(3):
        log.info("retrying")
        log.warning("one kind")
        log.error("another kind")
    now[0] += 2.5
    collapse.flush()
    assert lines == ["INFO: retrying", "WARNING: one kind", "ERROR: another kind",
                     "INFO: retrying", "INFO: retrying",
                     "WARNING: one kind (repeated 2 times in the last 2.5 s)",
                     "ERROR: another kind (repeated 2 times in the last 2.5 s)"]
    collapse.flush()
    assert len(lines) == 7  # counted once


def test_without_repeats_nothing_is_added(flood):
    log, lines, now, collapse = flood
    log.warning("once")
    now[0] += 20
    log.warning("once")
    collapse.flush()
    assert lines == ["WARNING: once", "WARNING: once"]
