"""Reconnect delays: exponential, capped, jittered within bounds (pure)."""

import random

import pytest

from device_sdk import Backoff


def test_ceiling_doubles_up_to_the_cap():
    b = Backoff(initial=0.5, maximum=10.0, multiplier=2.0)
    assert [b.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.ceiling(10_000) == 10.0   # a long outage neither overflows nor loops for ever


def test_jitter_stays_within_its_band():
    b = Backoff(initial=1.0, maximum=8.0, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(8):
        top = b.ceiling(attempt)
        delays = [b.delay(attempt, rng) for _ in range(200)]
        assert all(top * 0.5 <= d <= top for d in delays)
        assert len(set(delays)) > 150   # spread out, not one value


def test_no_jitter_is_exact_and_full_jitter_can_reach_zero():
    assert Backoff(initial=1.0, maximum=4.0, jitter=0).delay(1, random.Random(1)) == 2.0

    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    assert Backoff(initial=1.0, maximum=4.0, jitter=1.0).delay(3, Top()) == 0.0


def test_constant_backoff():
    assert Backoff(initial=2.0, maximum=2.0, multiplier=1.0).ceiling(50) == 2.0


@pytest.mark.parametrize("kwargs", [
    {"initial": 0}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 1.5},
    {"jitter": -0.1}, {"stable_after": -1},
])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_negative_attempt_is_refused():
    with pytest.raises(ValueError):
        Backoff().ceiling(-1)
