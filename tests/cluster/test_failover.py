"""Scenarios 1-5 on one cluster with the shipped Patroni defaults (ttl 30, loop_wait 10,
retry_timeout 10): bootstrap, kill -9 of the leader, rejoin through pg_rewind, network cut,
planned switchover. Each test starts from a healthy cluster (`Cluster.heal`), whatever the one
before left, and asserts only on rows of its own table: any one of them passes alone.
"""

from __future__ import annotations

import time

from harness import FACTS, Cluster, never_two_writers, wait_for

# Patroni's own bound on a failover: the leader key expires after ttl, the next loop (at most
# loop_wait later) takes it; the rest is slack for promotion on a 2-core machine.
TTL, LOOP_WAIT = 30, 10
FAILOVER_LIMIT = TTL + LOOP_WAIT + 30


def new_table(cluster: Cluster, leader: str, table: str) -> None:
    """The test's own table, empty: it asserts only on rows it wrote itself."""
    cluster.psql.query(
        cluster.node(leader).target,
        f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (note text PRIMARY KEY)",
    )


def write_row(cluster: Cluster, leader: str, table: str, note: str) -> None:
    insert = f"INSERT INTO {table} VALUES ('{note}')"  # noqa: S608 - fixed test names
    cluster.psql.query(cluster.node(leader).target, insert)


def notes(cluster: Cluster, name: str, table: str) -> set[str]:
    out = cluster.psql.query(cluster.node(name).target, f"SELECT note FROM {table}")  # noqa: S608
    return set(out.splitlines())


def wait_replicated(
    cluster: Cluster, replica: str, table: str, note: str, timeout: float = 30
) -> None:
    wait_for(f"{note!r} on {replica}", lambda: note in notes(cluster, replica, table), timeout)


def test_bootstrap_elects_one_leader_and_one_streaming_replica(cluster: Cluster):
    leader, replica = cluster.heal(60)
    members = cluster.members()
    assert sorted(m["role"] for m in members) == ["leader", "replica"]
    assert {m["name"] for m in members} == set(cluster.nodes)
    # Patroni and PostgreSQL speak on the overlay addresses.
    assert {m["host"] for m in members} == {n.address for n in cluster.nodes.values()}
    status = cluster.status(replica)
    assert status["replication_state"] == "streaming"
    assert cluster.status(leader)["role"] == "primary"
    new_table(cluster, leader, "bkt_bootstrap")
    write_row(cluster, leader, "bkt_bootstrap", "bootstrap")
    wait_replicated(cluster, replica, "bkt_bootstrap", "bootstrap")


def test_kill9_of_the_leader_node_promotes_the_replica(cluster: Cluster):
    leader, replica = cluster.heal()
    new_table(cluster, leader, "bkt_kill9")
    write_row(cluster, leader, "bkt_kill9", "before-kill")
    wait_replicated(cluster, replica, "bkt_kill9", "before-kill")

    killed_at = cluster.node(leader).kill9()
    assert cluster.node(leader).processes() == []
    new_leader, _ = cluster.wait_leader(FAILOVER_LIMIT, not_=leader)
    assert new_leader == replica

    # A new leader in the DCS is not enough: it must take writes.
    took = cluster.wait_writable(new_leader, 30) - killed_at
    write_row(cluster, new_leader, "bkt_kill9", "after-failover")
    FACTS.append(f"kill -9 of the leader -> new leader accepting writes: {took:.1f} s")
    assert notes(cluster, new_leader, "bkt_kill9") == {"before-kill", "after-failover"}


def test_old_leader_comes_back_through_pg_rewind_and_streams(cluster: Cluster):
    leader, replica = cluster.heal()
    new_table(cluster, leader, "bkt_rejoin")
    write_row(cluster, leader, "bkt_rejoin", "before-crash")
    wait_replicated(cluster, replica, "bkt_rejoin", "before-crash")
    node = cluster.node(leader)
    node.kill9()
    cluster.wait_leader(FAILOVER_LIMIT, not_=leader)
    cluster.wait_writable(replica, 30)
    write_row(cluster, replica, "bkt_rejoin", "while-down")
    log_before = len(cluster.patroni_log(leader))

    started = time.monotonic()
    node.start()
    cluster.wait_streaming(120, name=leader)
    FACTS.append(f"old leader back -> streaming: {time.monotonic() - started:.1f} s")

    log = cluster.patroni_log(leader)[log_before:]
    assert "running pg_rewind from" in log
    assert "pg_rewind exit code=0" in log
    assert cluster.leader() == replica
    write_row(cluster, replica, "bkt_rejoin", "after-rejoin")
    wait_replicated(cluster, leader, "bkt_rejoin", "after-rejoin")
    assert notes(cluster, leader, "bkt_rejoin") == {"before-crash", "while-down", "after-rejoin"}


def test_network_cut_leader_demotes_before_the_other_node_promotes(cluster: Cluster):
    leader, replica = cluster.heal()
    cluster.net.cut(cluster.node(leader).host.name)
    cut_at = time.monotonic()
    try:
        seen = cluster.watch_writers(leader, replica, FAILOVER_LIMIT + 30)
    finally:
        cluster.net.restore(cluster.node(leader).host.name)
    old_first_readonly, new_first_writer = never_two_writers(seen, leader, replica)
    FACTS.append(
        f"network cut: leader read-only after {old_first_readonly - cut_at:.1f} s, "
        f"other node writable after {new_first_writer - cut_at:.1f} s"
    )

    cluster.wait_streaming(120, name=leader)
    assert cluster.leader() == replica


def test_planned_switchover(cluster: Cluster):
    leader, replica = cluster.heal()
    new_table(cluster, leader, "bkt_switchover")
    started = time.monotonic()
    resp = cluster.switchover(leader, replica)
    assert resp.status == 200, resp.body
    cluster.wait_leader(60, not_=leader)
    assert cluster.leader() == replica
    took = cluster.wait_writable(replica, 30) - started
    FACTS.append(f"switchover -> new leader accepting writes: {took:.1f} s")
    write_row(cluster, replica, "bkt_switchover", "after-switchover")
    cluster.wait_streaming(120, name=leader)
    wait_replicated(cluster, leader, "bkt_switchover", "after-switchover")
