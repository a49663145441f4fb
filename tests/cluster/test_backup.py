"""Backups that survive losing an AZ (docs/backups.md), on a cluster whose pgBackRest
repository is the session's S3 server (SeaweedFS over TLS, encrypted, path-style): WAL of every
acknowledged commit in the bucket; scheduled full and differential backups taken by the timer's
job on the leader only; a replica built from the repository; and, last, both nodes destroyed
and a new cluster restored to a time between two known commits.

Each test starts from a healthy cluster and writes only its own table. The restore test
destroys the module's cluster, so it runs last here (file order).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest
from backup_jobs import run_timer_job, schedule
from conftest import make_cluster
from harness import FACTS, Cluster, WriterLog, wait_for
from netns import entered
from nodes import PG_BIN, Node
from s3 import S3Server

from bakery.config import load_settings
from bakery.repo.info import restore_problems

SCOPE = "bkt-cluster"  # cluster.yaml
DATA = "/var/lib/postgresql/14/patroni"
RESTORED_SCOPE = "bkt-restored"
FULL, DIFF = "bakery-backup-full.timer", "bakery-backup-diff.timer"


def s3_overrides(s3: S3Server, **pgbackrest) -> dict:
    """cluster.yaml with the S3 repository (archiving and schedule then come by default)."""
    return {
        "cluster.pgbackrest": {
            "repo": s3.repo(),
            "encryption": True,
            "retention_full": 2,
            # The test runs the timers' jobs itself; the calendar is still delivered.
            "schedule": {"full": "Sun *-*-* 03:00:00", "diff": "Mon..Sat *-*-* 03:00:00"},
            **pgbackrest,
        }
    }


@pytest.fixture(scope="module")
def s3_cluster(request, s3: S3Server):
    yield from make_cluster(request, s3_overrides(s3), s3=s3, label="S3 repository")


def healthy(cluster: Cluster) -> tuple[str, str]:
    """Healthy, and the S3 server plugged into this run (another test may have taken it)."""
    cluster.s3.attach(cluster.net)
    return cluster.heal()


def pgbackrest(node: Node, *args: str, timeout: float = 180) -> str:
    argv = ["pgbackrest", f"--stanza={node_scope(node)}", *args]
    return node.enter(argv, user="postgres", timeout=timeout).stdout


def node_scope(node: Node) -> str:
    conf = node.file("/etc/pgbackrest/pgbackrest.conf").read_text()
    return next(
        line[1:-1] for line in conf.splitlines() if line.startswith("[") and line != "[global]"
    )


def backups(node: Node) -> list[dict]:
    return json.loads(pgbackrest(node, "--output=json", "info"))[0]["backup"]


def status(node: Node, job: str) -> dict:
    return json.loads(node.file(f"/var/lib/bakery/status/{job}.json").read_text())


def sql(cluster: Cluster, name: str, statement: str) -> str:
    res = cluster.local_sql(name, statement, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def wait_archived(cluster: Cluster, leader: str, segment: str, timeout: float = 60) -> None:
    """Until PostgreSQL reports `segment` (or a later one) archived."""

    def archived() -> bool:
        last = sql(cluster, leader, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        # A segment's name is 24 hex digits (timeline, log, segment); a backup's history file
        # (`<segment>.<offset>.backup`) starts with the segment's name.
        return last[:24] >= segment

    wait_for(f"{segment} archived", archived, timeout)


def wait_leader_while_running(cluster: Cluster, node: Node, timeout: float) -> str:
    """The leader's name; fails at once when Patroni gives up (a failed bootstrap)."""
    deadline = time.monotonic() + timeout
    while (leader := cluster.leader()) is None:
        assert node.running(), f"Patroni on {node.name} exited: see its log"
        assert time.monotonic() < deadline, f"no leader after {timeout:.0f} s"
        time.sleep(0.5)
    return leader


def test_wal_of_every_acknowledged_commit_reaches_the_bucket(s3_cluster: Cluster):
    cluster = s3_cluster
    leader, replica = healthy(cluster)
    sql(cluster, leader, "DROP TABLE IF EXISTS bkt_archive; CREATE TABLE bkt_archive (id int)")
    first = sql(cluster, leader, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    writer = cluster.start_writer("bkt_archive", seconds=4)
    writer.popen.wait(60)
    acks = WriterLog.read(writer)
    assert acks.done and acks.acked, acks.errors[:5]
    # One more commit we know: its transaction must be in the archived WAL.
    xid, lsn = sql(
        cluster,
        leader,
        "CREATE TABLE IF NOT EXISTS bkt_archive_marker (at timestamptz);"
        "INSERT INTO bkt_archive_marker VALUES (now());"
        "SELECT txid_current() || ' ' || pg_current_wal_lsn()",
    ).split()
    last = sql(cluster, leader, f"SELECT pg_walfile_name('{lsn}')")
    sql(cluster, leader, "SELECT pg_switch_wal()")
    wait_archived(cluster, leader, last)
    # pgBackRest's own end-to-end check: a WAL switch, archived and found in the repository.
    pgbackrest(cluster.node(leader), "check")

    # Every segment from before the first commit to the marker's is in the bucket.
    listing = pgbackrest(cluster.node(replica), "--recurse", "--output=json", "repo-ls", "archive")
    stored = {name.rsplit("/", 1)[-1][:24] for name in json.loads(listing)}
    timeline, log, seg = first[:8], int(first[8:16], 16), int(first[16:24], 16)
    end = (int(last[8:16], 16), int(last[16:24], 16))
    wanted = []
    while (log, seg) <= end:
        wanted.append(f"{timeline}{log:08X}{seg:08X}")
        log, seg = (log + 1, 0) if seg == 0xFF else (log, seg + 1)
    assert set(wanted) <= stored, f"missing: {sorted(set(wanted) - stored)}"
    acked = len(acks.acked)
    # Every acknowledged row is in the table whose WAL was archived.
    assert sql(cluster, leader, "SELECT count(*) FROM bkt_archive") == str(acked)

    # The replica fetches the marker's segment through archive-get (decrypting it) and finds
    # the marker's commit in it.
    node = cluster.node(replica)
    # pg_waldump reads where a segment starts from its file name.
    node.enter(["install", "-d", "-o", "postgres", "/tmp/bkt-wal"])
    pgbackrest(node, "archive-get", last, f"/tmp/bkt-wal/{last}")
    dump = node.enter(
        [f"{PG_BIN}/pg_waldump", f"/tmp/bkt-wal/{last}"], user="postgres", check=False
    )
    commits = re.findall(rf"tx:\s+{xid}, .*desc: COMMIT", dump.stdout)
    assert len(commits) == 1, dump.stdout[-2000:] + dump.stderr[-500:]
    FACTS.append(
        f"archive: {acked} acknowledged commits and the marker in {len(wanted)} WAL "
        "segment(s), every one in the bucket"
    )


def test_timer_jobs_back_up_on_the_leader_only(s3_cluster: Cluster):
    cluster = s3_cluster
    leader, replica = healthy(cluster)
    for name in (leader, replica):
        node = cluster.node(name)
        # The bundle delivered the calendar; the image's units carry the job.
        assert schedule(node, FULL) == "Sun *-*-* 03:00:00"
        assert schedule(node, DIFF) == "Mon..Sat *-*-* 03:00:00"
    before = backups(cluster.node(leader))
    for timer, kind in ((FULL, "full"), (DIFF, "diff")):
        skipped = run_timer_job(cluster.node(replica), timer)
        assert skipped.returncode == 0, skipped.stderr
        assert f"{replica} is not the leader ({leader} is)" in skipped.stdout
        assert status(cluster.node(replica), "backup")["ok"] is True
        assert "skipped" in status(cluster.node(replica), "backup")["detail"]

        taken = run_timer_job(cluster.node(leader), timer, timeout=600)
        assert taken.returncode == 0, taken.stdout[-2000:] + taken.stderr[-2000:]
        record = status(cluster.node(leader), "backup")
        assert record["ok"] is True and record["detail"].startswith(f"{kind} backup ")
        assert record["at"].endswith("Z") and "T" in record["at"]
    after = backups(cluster.node(leader))
    new = after[len(before) :] if len(after) > len(before) else after[-2:]
    # Exactly one full and one differential: the replica's runs took nothing.
    assert [b["type"] for b in new] == ["full", "diff"]
    assert new[1]["reference"] and new[0]["label"] in new[1]["reference"]


def test_a_replica_is_built_from_the_repository_while_the_primary_is_up(s3_cluster: Cluster):
    cluster = s3_cluster
    leader, replica = healthy(cluster)
    if not backups(cluster.node(leader)):
        assert run_timer_job(cluster.node(leader), FULL, timeout=600).returncode == 0
    sql(cluster, leader, "DROP TABLE IF EXISTS bkt_rebuilt; CREATE TABLE bkt_rebuilt (n int)")
    sql(cluster, leader, "INSERT INTO bkt_rebuilt SELECT generate_series(1, 1000)")
    node = cluster.node(replica)
    node.stop()
    node.enter(["find", DATA, "-mindepth", "1", "-delete"])
    log_before = len(cluster.patroni_log(replica))
    node.start()
    cluster.wait_streaming(240, replica)
    assert cluster.leader() == leader  # the primary stayed up throughout
    log = cluster.patroni_log(replica)[log_before:]
    assert "replica has been created using pgbackrest" in log, log[-3000:]
    assert sql(cluster, replica, "SELECT count(*) FROM bkt_rebuilt") == "1000"


def test_the_launch_check_refuses_a_source_that_cannot_serve(s3: S3Server, s3_cluster: Cluster):
    """Against the real repository: a scope with no stanza, a target before every backup, a
    wrong passphrase; nothing is created (launch raises before any cloud call)."""
    cluster = s3_cluster
    leader, _ = healthy(cluster)
    if not backups(cluster.node(leader)):
        assert run_timer_job(cluster.node(leader), FULL, timeout=600).returncode == 0
    healthy_state = cluster.base / "state" / "secrets" / "repo_cipher"
    raw = json.loads(json.dumps(cluster.settings))
    raw["cluster"]["scope"] = RESTORED_SCOPE
    early = datetime(2000, 1, 1).isoformat() + "+00:00"
    wrong = s3.write_secret("wrong-cipher", "not-the-passphrase")
    cases = {
        "bakery.cluster.restore.from_scope: no stanza 'bkt-nothing'": {"from_scope": "bkt-nothing"},
        "bakery.cluster.restore.target_time: no backup of stanza": {
            "from_scope": SCOPE,
            "target_time": early,
        },
        "wrong passphrase": {"from_scope": SCOPE, "cipher_pass": {"file": str(wrong)}},
    }
    for expected, restore in cases.items():
        raw["cluster"]["restore"] = {
            "repo": s3.repo(),
            "cipher_pass": {"file": str(healthy_state)},
            **restore,
        }
        settings = load_settings(raw)
        with entered(s3.netns):
            problems = [str(p) for p in restore_problems(settings, connect_to=s3.connect_to())]
        assert len(problems) == 1 and expected in problems[0], problems


def test_a_new_cluster_is_restored_to_a_time_between_two_commits(
    request, s3: S3Server, s3_cluster: Cluster
):
    old = s3_cluster
    leader, _ = healthy(old)
    assert run_timer_job(old.node(leader), FULL, timeout=600).returncode == 0
    sql(old, leader, "DROP TABLE IF EXISTS bkt_restore; CREATE TABLE bkt_restore (n int, at text)")
    before, after = 25, 25
    for n in range(before):
        sql(old, leader, f"INSERT INTO bkt_restore VALUES ({n}, 'before')")  # noqa: S608
    # Gaps, not waits: the target lies well apart from the commits on both sides of it.
    time.sleep(1.5)
    target = sql(
        old,
        leader,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
        " || '+00:00'",
    )
    time.sleep(1.5)
    for n in range(after):
        sql(old, leader, f"INSERT INTO bkt_restore VALUES ({before + n}, 'after')")  # noqa: S608
    # The commits after the target must be archived: recovery stops at the first of them.
    segment = sql(old, leader, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    sql(old, leader, "SELECT pg_switch_wal()")
    wait_archived(old, leader, segment)
    cipher_pass = old.base / "state" / "secrets" / "repo_cipher"

    # Losing everything: both nodes' services killed, their data directories gone.
    for node in old.nodes.values():
        node.kill9()
        node.enter(["find", DATA, "-mindepth", "1", "-delete"])
        assert not any(node.file(DATA).iterdir())

    # The new cluster (new scope, new state directory) restores from the old one's stanza in
    # the same bucket, with the old repository's passphrase.
    restore = {
        "from_scope": SCOPE,
        "target_time": target,
        "repo": s3.repo(),
        "cipher_pass": {"file": str(cipher_pass)},
    }
    overrides = s3_overrides(s3) | {"cluster.scope": RESTORED_SCOPE, "cluster.restore": restore}
    generator = make_cluster(request, overrides, s3=s3, start=False, label="restored")
    new = next(generator)
    try:
        # What `invoke launch` checks first, against the real repository.
        settings = load_settings(new.settings)
        with entered(s3.netns):
            assert restore_problems(settings, connect_to=s3.connect_to()) == []
        first, second = list(new.nodes.values())
        t0 = time.monotonic()
        first.start_patroni()
        assert wait_leader_while_running(new, first, 300) == first.name
        FACTS.append(f"restore: leader of the restored cluster after {time.monotonic() - t0:.1f} s")
        counts = sql(
            new,
            first.name,
            "SELECT count(*) FILTER (WHERE at = 'before') || ' ' || "
            "count(*) FILTER (WHERE at = 'after') FROM bkt_restore",
        )
        got_before, got_after = map(int, counts.split())
        FACTS.append(
            f"restore to time: {got_before} of {before} rows before the target, {got_after} after"
        )
        assert (got_before, got_after) == (before, 0)
        assert status(first, "restore")["ok"] is True
        assert status(first, "stanza")["ok"] is True  # the new stanza, by post_bootstrap

        # The new cluster's first backup, then its replica is built from the repository.
        assert run_timer_job(first, FULL, timeout=600).returncode == 0
        second.start_patroni()
        new.wait_streaming(300, second.name)
        log = new.patroni_log(second.name)
        assert "replica has been created using pgbackrest" in log, log[-3000:]
        assert sql(new, second.name, "SELECT count(*) FROM bkt_restore") == str(before)
    except BaseException as error:
        generator.throw(error)  # its teardown keeps the run's files for a look
        raise
    else:
        generator.close()
