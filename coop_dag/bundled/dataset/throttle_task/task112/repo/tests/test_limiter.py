import pytest

from throttle import KeyedLimiter, ManualClock


def test_keys_are_independent():
    clock = ManualClock()
    limiter = KeyedLimiter(rate=1, capacity=2, clock=clock)
    assert [limiter.allow("alice") for _ in range(3)] == [True, True, False]
    assert limiter.allow("bob")
    assert "alice" in limiter and len(limiter) == 2
    assert limiter.retry_after("alice") == pytest.approx(1.0)
    clock.advance(1)
    assert limiter.allow("alice")


def test_bucket_shares_clock_and_settings():
    clock = ManualClock()
    limiter = KeyedLimiter(rate=3, capacity=5, clock=clock)
    bucket = limiter.bucket("k")
    assert bucket is limiter.bucket("k")
    assert (bucket.rate, bucket.capacity, bucket.clock) == (3.0, 5.0, clock)


def test_invalid():
    with pytest.raises(ValueError):
        KeyedLimiter(1, 0)
