"""Waiting on a cluster's consoles: what the progress display shows on a terminal and in a log,
and what a timeout says."""

from __future__ import annotations

import datetime as dt
import io
import threading
from types import SimpleNamespace

import pytest

from bakery.cloud import watch
from bakery.cloud.api import Cancelled, CloudError
from bakery.cloud.cluster import CloudNode, ClusterView
from bakery.config import load_settings
from bakery.node.report import last_report
from tests.helpers import base_config
from tests.unit.test_report import line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def view(tmp_path, consoles: dict[str, str]) -> ClusterView:
    settings = load_settings(base_config(tmp_path))
    nodes = {
        name: CloudNode(
            name,
            "a",
            "prod1",
            None,
            SimpleNamespace(id=f"id-{name}", name=name, status="ACTIVE", image={"id": "i"}),
            SimpleNamespace(name=f"bakery-{name}", fixed_ips=[{"ip_address": "10.0.0.1"}]),
            None,
            last_report(text, name),
            text,
        )
        for name, text in consoles.items()
    }
    return ClusterView(
        settings, nodes, {"prod1": []}, dt.datetime(2026, 12, 1, 21, 40, tzinfo=dt.UTC)
    )


def test_plain_progress_logs_a_line_only_when_what_it_says_changes():
    logged = []
    progress = watch.Progress(logged.append, io.StringIO())  # not a terminal
    progress.show("waiting", {"a": ("a, booting", ", 1 s ago"), "b": ("b, booting", "")})
    progress.show("waiting", {"a": ("a, booting", ", 6 s ago"), "b": ("b, replica", "")})
    assert logged == ["a, booting, 1 s ago", "b, booting", "b, replica"]


def test_terminal_progress_redraws_its_block_in_place():
    screen = Terminal()
    progress = watch.Progress(lambda _: None, screen)
    progress.show("waiting (1 s)", {"a": ("a, booting", ", 1 s ago")})
    progress.show("waiting (6 s)", {"a": ("a, booting", ", 6 s ago")})
    assert screen.getvalue() == (
        "\x1b[2Kwaiting (1 s)\n\x1b[2Ka, booting, 1 s ago\n"
        "\x1b[F\x1b[F\x1b[2Kwaiting (6 s)\n\x1b[2Ka, booting, 6 s ago\n"
    )


def test_a_failed_read_is_not_yet_and_the_timeout_names_reports_and_consoles(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "POLL", 0.01)
    console = "boot noise\n" + line("n-0", 3, r="replica", rs=None, s="starting")
    answers = iter([CloudError("environment prod1: 503 Service Unavailable")])

    def read():
        for answer in answers:
            raise answer
        return view(tmp_path, {"n-0": console})

    with pytest.raises(CloudError) as timed_out:
        watch.wait_for_view(
            "a healthy cluster",
            read,
            lambda v: v.health(stale=False).problems,
            0.2,
            threading.Event(),
            watch.Progress(lambda _: None),
        )
    message = str(timed_out.value)
    assert message.startswith("timed out after 0 s waiting for a healthy cluster: no leader;")
    assert "  n-0, server ACTIVE, replica, starting, lag 0 B, reported " in message
    assert "      boot noise" in message


def test_a_wait_stops_at_once_when_cancelled(tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="stopped while waiting for x"):
        watch.wait_for_view(
            "x", lambda: None, lambda v: ["never"], 60, cancel, watch.Progress(print)
        )
