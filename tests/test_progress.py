"""imagefs.progress: the one throttle, the progress line, byte counts for people."""

import io

from imagefs.progress import ProgressLine, Throttle, human


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_throttle_is_due_at_once_then_once_per_period():
    clock = Clock()
    throttle = Throttle(5.0, clock)
    assert throttle.due()
    clock.now += 4.9
    assert not throttle.due()
    clock.now += 0.1
    assert throttle.due() and not throttle.due()


def test_throttle_can_wait_a_period_first_and_be_forced():
    clock = Clock()
    throttle = Throttle(5.0, clock, wait_first=True)
    assert not throttle.due()
    assert throttle.due(force=True)
    clock.now += 4.0
    assert not throttle.due()  # the forced one counted
    assert throttle.due(now=clock.now + 1.0)


def test_progress_line_redraws_at_most_5_times_a_second_and_always_at_the_end():
    out = io.StringIO()
    line = ProgressLine("downloading", out)
    line("img", 1024, 4096)
    line("img", 2048, 4096)  # within 0.2 s: not drawn
    assert out.getvalue().count("\r") == 1 and "1.0 KiB of 4.0 KiB (25%)" in out.getvalue()
    line("img", 4096, 4096)  # the end: drawn
    assert out.getvalue().count("\r") == 2 and "(100%)" in out.getvalue()
    line.finish()
    assert out.getvalue().endswith("\033[K\n")


def test_a_line_never_drawn_finishes_with_nothing():
    out = io.StringIO()
    ProgressLine("uploading", out).finish()
    assert out.getvalue() == ""


def test_human():
    assert [human(n) for n in (0, 1023, 1024, 1536 << 20, 5 << 40, 5 << 50)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 GiB", "5.0 TiB", "5120.0 TiB"]
