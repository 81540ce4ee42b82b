"""The reconnect schedule (pure): the wait grows with the outage's length, not with the
number of attempts, stays within [w/2, w] of its bound w, and a connection that did not
last does not end the outage. Config checks of the new [cloud] fields."""

import pytest

from gateway.cloud.backoff import STABLE_S, Backoff
from gateway.config import ConfigError, config_from_dict


def shipped(rand: float = 0.5) -> Backoff:
    return Backoff(min_s=1.0, max_s=120.0, ramp_s=600.0, rand=lambda: rand)


def test_short_outage_short_wait_long_outage_up_to_the_max():
    b = shipped()
    b.connected(0.0)
    b.lost(100.0)
    assert b.bound(100.0) == 1.0            # at first: min_reconnect_s
    assert b.bound(120.0) == 4.0            # 20 s down: 120 * 20 / 600
    assert b.bound(400.0) == 60.0
    assert b.bound(700.0) == 120.0          # the max only after the ramp (10 minutes)
    assert b.bound(100_000.0) == 120.0


def test_attempts_do_not_raise_the_wait():
    b = shipped()
    b.lost(0.0)
    for _ in range(50):          # fifty failed attempts in the first second change nothing
        b.lost(0.5)
    assert b.bound(0.5) == 1.0


def test_wait_is_within_half_and_whole_bound():
    assert shipped(rand=0.0).next_delay(0.0) == 0.5
    assert shipped(rand=0.999999).next_delay(0.0) == pytest.approx(1.0)
    b = shipped(rand=0.0)
    b.lost(0.0)
    assert b.next_delay(20.0) == 2.0


def test_a_connection_that_lasted_ends_the_outage_a_short_one_does_not():
    b = shipped()
    b.lost(0.0)
    b.connected(300.0)
    b.lost(305.0)                  # up for 5 s: still the same outage, now 305 s old
    assert b.bound(305.0) == 61.0
    b.connected(400.0)
    b.lost(400.0 + STABLE_S)       # up long enough: a new outage starts
    assert b.bound(400.0 + STABLE_S) == 1.0


def test_new_cloud_fields_are_checked():
    cfg = config_from_dict({"cloud": {"reconnect_ramp_s": 60, "backlog_warn_after_s": 5}})
    assert (cfg.cloud.reconnect_ramp_s, cfg.cloud.backlog_warn_after_s) == (60.0, 5.0)
    with pytest.raises(ConfigError, match="cloud.reconnect_ramp_s"):
        config_from_dict({"cloud": {"reconnect_ramp_s": 0}})
    with pytest.raises(ConfigError, match="cloud.backlog_warn_after_s"):
        config_from_dict({"cloud": {"backlog_warn_after_s": "soon"}})
