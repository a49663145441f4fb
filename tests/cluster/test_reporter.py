"""The node reporter and the leader's handover, run as their units say inside the nodes'
namespaces against the real Patroni: what the BAKERY-NODE lines say is what the REST API says,
and `systemctl stop patroni` on the leader is a switchover.

A node's reporter output (its log, `Node.console_text()`) stands for its serial console: the image
sends the same stdout there (StandardOutput=journal+console).
"""

from __future__ import annotations

import datetime as dt
import json

from harness import FACTS, Cluster, wait_for
from nodes import BUILD_ID

from bakery.node.report import NodeReport, judge, last_report

MAX_LAG = 1048576  # the shipped maximum_lag_on_failover, which node.env carries


def report_of(c: Cluster, name: str) -> NodeReport | None:
    return last_report(c.node(name).console_text(), name)


def agrees_with_rest_api(c: Cluster, name: str) -> NodeReport | None:
    """The node's last report when it says what its REST API says right now, else None."""
    report, live = report_of(c, name), c.status(name)
    if report is None or live is None or report.error is not None:
        return None
    member = next((m for m in c.members() or [] if m["name"] == name), {})
    lag = 0 if live.get("role") == "primary" else member.get("lag")
    # A lag's exact bytes are no news to the reporter (they move while clients write): it
    # reports when the lag crosses the threshold, so that is what must agree.
    said = (report.role, report.state, report.timeline, report.replication, _side(report.lag))
    real = (live.get("role"), live.get("state"), live.get("timeline"))
    real += (live.get("replication_state"), _side(lag))
    return report if said == real else None


def _side(lag: int | None) -> bool | None:
    return None if lag is None else lag <= MAX_LAG


def test_reports_on_the_console_agree_with_the_rest_api(cluster: Cluster):
    c = cluster
    leader, replica = c.heal()
    reports = {
        name: wait_for(
            f"{name}'s report to match its REST API", lambda n=name: agrees_with_rest_api(c, n), 60
        )
        for name in c.nodes
    }
    assert reports[leader].role == "primary" and reports[leader].lag == 0
    assert (reports[replica].role, reports[replica].replication) == ("replica", "streaming")
    assert {r.build_id for r in reports.values()} == {BUILD_ID}
    health = judge(reports, MAX_LAG, dt.datetime.now(dt.UTC), max_age=420)
    assert (health.healthy, health.leader) == (True, leader), health.problems
    # Short lines, and nothing of the node's secrets or addresses.
    secrets = [v for k, v in c.node(leader).patroni_env().items() if "PASSWORD" in k]
    for node in c.nodes.values():
        lines = [line for line in node.console_text().splitlines() if "BAKERY-NODE" in line]
        assert lines and all(len(line) < 300 for line in lines)
        assert not any(str(s) in node.console_text() for s in secrets)
        assert node.address not in node.console_text()


def test_a_failed_job_appears_in_the_next_line_and_goes_again(cluster: Cluster):
    c = cluster
    _, replica = c.heal()
    status = c.node(replica).file("/var/lib/bakery/status/test-job.json")
    try:
        # As the contract says a job writes it: a temporary file, then a rename.
        temp = status.with_suffix(".tmp")
        temp.write_text(json.dumps({"ok": False, "at": "2026-12-01T03:00:00Z", "detail": "x"}))
        temp.rename(status)
        failed = wait_for(
            "the failed job in a report",
            lambda: (r := report_of(c, replica)) and r.failed_jobs == ("test-job",) and r,
            30,
        )
        temp.write_text(json.dumps({"ok": True, "at": "2026-12-01T03:05:00Z", "detail": "y"}))
        temp.rename(status)
        cleared = wait_for(
            "the job cleared in a later report",
            lambda: (r := report_of(c, replica)) and r.seq > failed.seq and not r.failed_jobs and r,
            30,
        )
        assert cleared.role == "replica"
    finally:
        status.unlink(missing_ok=True)


def test_stopping_patroni_on_the_leader_switches_over_first(cluster: Cluster):
    c = cluster
    leader, replica = c.heal()
    before = wait_for("the leader's report", lambda: agrees_with_rest_api(c, leader), 60)
    took = c.node(leader).stop_patroni()
    journal = c.patroni_log(leader)
    assert f"switchover to {replica}: 200" in journal, journal[-2000:]
    assert f"stepped down; {replica} leads" in journal
    # A switchover, not a failover after the leader key expired: the replica leads at once.
    new_leader, _ = c.wait_leader(10, not_=leader)
    assert new_leader == replica
    promoted = wait_for(
        f"{replica} reporting itself primary",
        lambda: (r := report_of(c, replica)) and r.is_leader and r,
        30,
    )
    assert promoted.timeline == before.timeline + 1
    # The old leader's reporter (still running) says its REST API is gone.
    gone = wait_for(
        f"{leader}'s report of its stopped Patroni",
        lambda: (r := report_of(c, leader)) and r.error is not None and r,
        30,
    )
    assert gone.error.startswith("api: ")
    FACTS.append(f"handover on `systemctl stop patroni` of the leader: the stop took {took:.1f} s")


def test_stopping_patroni_on_a_replica_hands_nothing_over(cluster: Cluster):
    c = cluster
    leader, replica = c.heal()
    c.node(replica).stop_patroni()
    assert "not the leader: nothing to hand over" in c.patroni_log(replica)
    assert c.leader() == leader
