import pytest

from throttle import ManualClock, MonotonicClock


def test_manual_clock():
    clock = ManualClock(5)
    assert clock.now() == 5.0
    clock.advance(1.5)
    clock.sleep(0.5)
    clock.sleep(-1)
    assert clock.now() == 7.0
    assert clock.sleeps == [0.5, -1]
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_monotonic_clock_moves_forward():
    clock = MonotonicClock()
    a = clock.now()
    clock.sleep(0)
    assert clock.now() >= a
