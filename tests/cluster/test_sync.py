"""Scenario 6: synchronous mode. A client keeps committing while the leader is killed, and
again while the leader's Patroni is stopped (its unit's handover); each time every commit that
was acknowledged to the client is on the new leader.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

from harness import FACTS, Cluster, WriterLog, wait_for

FAILOVER_LIMIT = 70


@dataclass
class Outcome:
    leader: str  # before
    replica: str  # the synchronous standby before
    new_leader: str
    acked_before: int  # commits acknowledged when the leadership was disturbed
    log: WriterLog
    lost: list[int]

    @property
    def interruption(self) -> float:
        """The longest time without an acknowledged commit."""
        times = sorted(epoch for _, epoch in self.log.acked.values())
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def commits_through(
    c: Cluster, table: str, disturb: Callable[[str], object], limit: float
) -> Outcome:
    """A client commits into `table` on a healthy synchronous cluster while `disturb(leader)`
    moves the leadership; then every acknowledged row is looked for on the new leader."""
    leader, replica = c.heal()

    def sync_standby() -> bool:
        return any(m["name"] == replica and m["role"] == "sync_standby" for m in c.members() or [])

    wait_for(f"{replica} as synchronous standby", sync_standby, 60)
    c.psql.query(
        c.node(leader).target,
        f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY)",
    )
    writer = c.start_writer(table)
    try:
        wait_for("20 acknowledged commits", lambda: len(WriterLog.read(writer).acked) >= 20, 60)
        disturb(leader)
        acked_before = len(WriterLog.read(writer).acked)
        new_leader, _ = c.wait_leader(limit, not_=leader)
        wait_for(
            "commits acknowledged by the new leader",
            lambda: len(WriterLog.read(writer).acked_by(new_leader)) >= 20,
            60,
        )
    finally:
        c.sup.stop(writer, signal.SIGTERM, timeout=15)
    log = WriterLog.read(writer)
    rows = c.psql.query(c.node(new_leader).target, f"SELECT id FROM {table}")  # noqa: S608
    lost = sorted(set(log.acked) - {int(r) for r in rows.split()})
    return Outcome(leader, replica, new_leader, acked_before, log, lost)


def test_no_acknowledged_commit_is_lost_when_the_leader_is_killed(sync_cluster: Cluster):
    c = sync_cluster
    out = commits_through(c, "bkt_acked", lambda leader: c.node(leader).kill9(), FAILOVER_LIMIT)
    FACTS.append(
        f"synchronous mode: {out.acked_before} commits acknowledged before the kill, "
        f"{len(out.log.acked)} in all, {len(out.lost)} lost"
    )
    assert out.log.done
    assert out.acked_before >= 20
    assert out.new_leader == out.replica
    assert out.lost == []


def test_a_graceful_stop_of_the_leader_hands_over_without_losing_a_commit(sync_cluster: Cluster):
    """patroni.service's ExecStop (bakery-node handover) under a committing client: the
    synchronous standby takes over at once (no leader key left to expire)."""
    c = sync_cluster
    took: list[float] = []
    out = commits_through(
        c, "bkt_handover", lambda leader: took.append(c.node(leader).stop_patroni()), 10
    )
    FACTS.append(
        f"handover on a graceful stop (synchronous mode): the stop took {took[0]:.1f} s, "
        f"write interruption {out.interruption:.1f} s, acknowledged commits lost "
        f"{len(out.lost)} of {len(out.log.acked)}"
    )
    assert out.new_leader == out.replica
    assert f"switchover to {out.replica}: 200" in c.patroni_log(out.leader)
    assert out.lost == []
