"""Scenario 6: synchronous mode. A client keeps committing while the leader is killed; after
the failover every commit that was acknowledged to the client is on the new leader.
"""

from __future__ import annotations

import signal

from harness import FACTS, Cluster, WriterLog, wait_for

FAILOVER_LIMIT = 70
TABLE = "bkt_acked"


def test_no_acknowledged_commit_is_lost_when_the_leader_is_killed(sync_cluster: Cluster):
    c = sync_cluster
    leader, replica = c.heal()

    def sync_standby() -> bool:
        return any(m["name"] == replica and m["role"] == "sync_standby" for m in c.members() or [])

    wait_for(f"{replica} as synchronous standby", sync_standby, 60)
    c.psql.query(c.node(leader).target, f"CREATE TABLE {TABLE} (id int PRIMARY KEY)")

    writer = c.start_writer(TABLE)
    try:
        wait_for("20 acknowledged commits", lambda: len(WriterLog.read(writer).acked) >= 20, 60)
        c.node(leader).kill9()
        acked_at_kill = len(WriterLog.read(writer).acked)
        new_leader, _ = c.wait_leader(FAILOVER_LIMIT, not_=leader)
        wait_for(
            "commits acknowledged by the new leader",
            lambda: len(WriterLog.read(writer).acked_by(new_leader)) >= 20,
            60,
        )
    finally:
        c.sup.stop(writer, signal.SIGTERM, timeout=15)
    log = WriterLog.read(writer)
    assert log.done

    rows = c.psql.query(c.node(new_leader).target, f"SELECT id FROM {TABLE}")  # noqa: S608
    present = {int(r) for r in rows.split()}
    lost = sorted(set(log.acked) - present)
    FACTS.append(
        f"synchronous mode: {acked_at_kill} commits acknowledged before the kill, "
        f"{len(log.acked)} in all, {len(lost)} lost"
    )
    assert acked_at_kill >= 20
    assert new_leader == replica
    assert lost == []


def test_a_graceful_stop_of_the_leader_hands_over_without_losing_a_commit(sync_cluster: Cluster):
    """patroni.service's ExecStop (bakery-node handover) under a committing client: the
    synchronous standby takes over at once, and every acknowledged commit is there."""
    c = sync_cluster
    leader, replica = c.heal()

    def sync_standby() -> bool:
        return any(m["name"] == replica and m["role"] == "sync_standby" for m in c.members() or [])

    wait_for(f"{replica} as synchronous standby", sync_standby, 60)
    table = "bkt_handover"
    c.psql.query(
        c.node(leader).target,
        f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY)",
    )
    writer = c.start_writer(table)
    try:
        wait_for("20 acknowledged commits", lambda: len(WriterLog.read(writer).acked) >= 20, 60)
        took = c.node(leader).stop_patroni()
        new_leader, _ = c.wait_leader(10, not_=leader)
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
    times = sorted(epoch for _, epoch in log.acked.values())
    interruption = max(b - a for a, b in zip(times, times[1:], strict=False))
    FACTS.append(
        f"handover on a graceful stop (synchronous mode): ExecStop {took:.1f} s, "
        f"write interruption {interruption:.1f} s, acknowledged commits lost {len(lost)} "
        f"of {len(log.acked)}"
    )
    assert new_leader == replica
    assert f"switchover to {replica}: 200" in c.patroni_log(leader)
    assert lost == []
