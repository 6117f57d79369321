import pytest

from throttle import ManualClock, TokenBucket


def test_burst_then_refill():
    clock = ManualClock()
    bucket = TokenBucket(rate=2, capacity=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_refill_is_capped():
    clock = ManualClock()
    bucket = TokenBucket(rate=1, capacity=2, clock=clock, tokens=0)
    clock.advance(100)
    assert bucket.tokens == 2.0


def test_wait_time():
    clock = ManualClock()
    bucket = TokenBucket(rate=4, capacity=4, clock=clock, tokens=1)
    assert bucket.wait_time(1) == 0.0
    assert bucket.wait_time(3) == pytest.approx(0.5)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    bucket = TokenBucket(1, 2, ManualClock())
    with pytest.raises(ValueError):
        bucket.try_acquire(0)
    with pytest.raises(ValueError):
        bucket.try_acquire(3)
