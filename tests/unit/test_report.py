"""Reading BAKERY-NODE lines back from console text, and judging a cluster by them."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from bakery.node.report import (
    MARKER,
    NodeReport,
    judge,
    last_report,
    last_reports,
    report_cells,
    table,
)

NOW = dt.datetime(2026, 12, 1, 21, 40, 0, tzinfo=dt.UTC)


def payload(node="n-0", seq=1, **changes) -> dict:
    data = {
        "v": 1,
        "q": seq,
        "t": "2026-12-01T21:39:50Z",
        "n": node,
        "b": "postgresql14-patroni-20261201T204512Z-3f9c2a1b-7e21",
        "r": "replica",
        "s": "running",
        "tl": 2,
        "rs": "streaming",
        "lag": 0,
        "sy": False,
        "pr": False,
        "f": [],
        "e": None,
    }
    data.update(changes)
    return data


def line(node="n-0", seq=1, prefix="", **changes) -> str:
    return f"{prefix}{MARKER} {json.dumps(payload(node, seq, **changes), separators=(',', ':'))}"


def test_a_reporter_line_of_the_documented_size_parses():
    text = line(node="prod1-postgresql-0", r="primary", rs=None)
    assert len(text) < 300  # some 400 lines fit the 100 KiB Nova keeps
    report = last_report(text, "prod1-postgresql-0")
    assert report is not None
    assert (report.role, report.timeline, report.lag, report.at) == (
        "primary",
        2,
        0,
        dt.datetime(2026, 12, 1, 21, 39, 50, tzinfo=dt.UTC),
    )
    assert report.is_leader


def test_the_last_line_of_each_node_wins_among_garbage_and_other_output():
    console = "\r\n".join(
        [
            "[    0.000000] Linux version 6.1.0-28-cloud-amd64",
            line("a", 1, r="primary", rs=None),
            line("b", 1, prefix="[   41.512] bakery-reporter[612]: ", s="starting", rs=None),
            "BAKERY-NODE not json at all",
            'BAKERY-NODE {"v": 1, "n": "b"',  # cut short
            line("b", 2, lag=5),
            line("b", 3, v=2),  # a future format: skipped, the version-1 line before counts
            line("c", 1, q="three"),  # wrong type: skipped
            'BAKERY-MANIFEST {"build_id": "x"}',
            line("b", 4, prefix="garbage before ", lag=7)[:-5],  # truncated tail
        ]
    )
    reports = last_reports(console)
    assert set(reports) == {"a", "b"}
    assert (reports["b"].seq, reports["b"].lag) == (2, 5)
    assert reports["a"].role == "primary"
    assert last_report(console, "c") is None


def test_text_after_the_object_on_its_line_is_no_harm():
    # A kernel message can land right after the serial output; the JSON object ends where
    # it ends.
    console = "login: " + line("a", 7, lag=3) + "[   99.1] random: crng init done"
    assert last_report(console, "a").lag == 3


def test_a_restarted_reporter_counts_from_one_and_still_wins():
    console = "\n".join([line("a", 57), line("a", 1, r="primary", rs=None)])
    assert last_report(console, "a").role == "primary"


@given(st.text())
def test_any_console_text_parses_without_error(text):
    for report in last_reports(text).values():
        assert isinstance(report, NodeReport)


@given(st.integers(min_value=0, max_value=300))
def test_a_line_cut_anywhere_never_yields_a_wrong_report(cut):
    full = line("a", 9, lag=123456)
    report = last_report(full[:cut], "a")
    assert report is None or report.lag == 123456


def reports(*specs) -> dict:
    return {name: NodeReport.from_json(payload(name, **changes)) for name, changes in specs}


def test_one_leader_and_streaming_replicas_are_healthy():
    health = judge(reports(("a", {"r": "primary", "rs": None}), ("b", {}), ("c", {})), 1024, NOW)
    assert (health.healthy, health.leader, health.problems) == (True, "a", [])


def test_each_kind_of_trouble_is_named():
    health = judge(
        {
            **reports(
                ("a", {"r": "primary", "rs": None}),
                ("b", {"lag": 5000}),
                ("c", {"rs": None}),
                ("d", {"r": None, "s": None, "e": "api: connection refused"}),
                ("e", {"t": "2026-12-01T21:00:00Z"}),
                ("f", {"lag": None}),
            ),
            "g": None,
        },
        1024,
        NOW,
        max_age=420,
    )
    assert not health.healthy
    assert health.problems == [
        "b: replica, 4.9 KiB behind (more than 1.0 KiB)",
        "c: replica, not streaming (no replication)",
        "d: api: connection refused",
        "e: last report 40 min old",
        "f: replica, lag unknown",
        "g: no report on its console",
    ]


def test_no_leader_and_two_leaders_are_problems():
    assert judge(reports(("a", {}), ("b", {})), 0, NOW).problems[0] == "no leader"
    two = judge(reports(("a", {"r": "primary"}), ("b", {"r": "primary"})), 0, NOW)
    assert two.problems == ["2 leaders: a, b"] and two.leader is None


def test_failed_jobs_and_pending_restarts_degrade_without_blocking():
    health = judge(
        reports(("a", {"r": "primary", "f": ["backup"]}), ("b", {"pr": True})), 1024, NOW
    )
    assert health.healthy
    assert health.warnings == [
        "a: failed jobs: backup",
        "b: PostgreSQL is pending a restart",
    ]


def test_status_cells_and_table():
    report = NodeReport.from_json(payload("a", lag=3 * 1024 * 1024, sy=True, f=["backup"]))
    cells = report_cells(report, NOW)
    assert cells == {
        "role": "replica (sync)",
        "state": "streaming; failed: backup",
        "tl": "2",
        "lag": "3.0 MiB",
        "report": "10 s ago",
    }
    assert report_cells(None, NOW)["state"] == "no report"
    text = table(["node", "role"], [["a", "primary"], ["bb", "-"]])
    assert text.splitlines() == ["node  role", "a     primary", "bb    -"]
