"""Waiting on a cloud: an answer, a timeout that says what was awaited, or a prompt stop; and
polls that follow a near change closely and back off from a far one."""

from __future__ import annotations

import threading
import time

import pytest

from bakery.cloud.api import BUILD_BACKOFF, Backoff, Cancelled, CloudError, wait_for

FAST = Backoff(first=0.01, factor=1.5, cap=0.02)


def test_wait_for_returns_the_first_answer():
    answers = iter([None, None, "ACTIVE"])
    assert wait_for("a server", lambda: next(answers), 5, threading.Event(), FAST) == "ACTIVE"


def test_wait_for_gives_up_after_its_timeout_naming_what_it_awaited():
    with pytest.raises(CloudError, match="timed out after 0 s waiting for builder x to stop"):
        wait_for("builder x to stop", lambda: None, 0.05, threading.Event(), FAST)


def test_wait_for_stops_at_once_when_cancelled():
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="stopped while waiting for an image"):
        wait_for("an image", lambda: None, 600, cancel, Backoff(first=30, cap=30))
    assert time.monotonic() - started < 20  # the 30 s pause is cut short, not slept


def test_pauses_start_short_and_grow_to_their_cap():
    pauses = Backoff(first=0.5, factor=2, cap=3).pauses()
    assert [next(pauses) for _ in range(5)] == [0.5, 1.0, 2.0, 3, 3]


def test_the_first_poll_waits_its_pause_and_the_last_is_at_the_deadline():
    started, polls = time.monotonic(), []
    with pytest.raises(CloudError):
        wait_for("x", lambda: polls.append(time.monotonic()), 0.3, threading.Event(), Backoff(10))
    assert len(polls) == 1 and 0.25 < polls[0] - started < 5


def test_a_ten_minute_build_costs_far_fewer_polls_than_a_fixed_interval_would():
    # The bound: about 120 requests of console/status polling for 10 minutes.
    assert BUILD_BACKOFF.polls_within(600) <= 65
    assert BUILD_BACKOFF.polls_within(3) == 2  # a change within seconds is seen within seconds
