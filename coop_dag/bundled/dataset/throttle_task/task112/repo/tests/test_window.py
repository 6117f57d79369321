import pytest

from throttle import ManualClock, SlidingWindowLog


def test_window_limits_and_slides():
    clock = ManualClock()
    window = SlidingWindowLog(limit=2, period=10, clock=clock)
    assert window.allow("a") and window.allow("a")
    assert not window.allow("a")
    assert window.allow("b")
    clock.advance(9.9)
    assert not window.allow("a")
    clock.advance(0.1)
    assert window.allow("a")
    assert window.count("a") == 1


def test_reset():
    window = SlidingWindowLog(1, 1, ManualClock())
    window.allow("a")
    window.allow("b")
    window.reset("a")
    assert window.allow("a") and not window.allow("b")
    window.reset()
    assert window.allow("b")


def test_invalid():
    with pytest.raises(ValueError):
        SlidingWindowLog(0, 1)
