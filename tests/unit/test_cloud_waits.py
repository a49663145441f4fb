"""Waiting on a cloud: an answer, a timeout that says what was awaited, or a prompt stop."""

from __future__ import annotations

import threading
import time

import pytest

from bakery.cloud.api import Cancelled, CloudError, wait_for


def test_wait_for_returns_the_first_answer():
    answers = iter([None, None, "ACTIVE"])
    assert wait_for("a server", lambda: next(answers), 5, threading.Event(), 0.01) == "ACTIVE"


def test_wait_for_gives_up_after_its_timeout_naming_what_it_awaited():
    with pytest.raises(CloudError, match="timed out after 0 s waiting for builder x to stop"):
        wait_for("builder x to stop", lambda: None, 0.05, threading.Event(), 0.01)


def test_wait_for_stops_at_once_when_cancelled():
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="stopped while waiting for an image"):
        wait_for("an image", lambda: None, 600, cancel, interval=30)
    assert time.monotonic() - started < 20  # the 30 s interval is cut short, not slept
