"""Scenario 7: pgBackRest with the rendered pgbackrest.conf on the leader: stanza-create, a full
backup, a restore into a scratch directory, and the restored copy holds the same rows.
"""

from __future__ import annotations

import json

from harness import Cluster, wait_for
from nodes import PG_BIN

SCRATCH = "/var/lib/postgresql/restore-scratch"
DIGEST = "SELECT count(*) || ':' || md5(string_agg(g || '=' || v, ',' ORDER BY g)) FROM bkt_backup"


def test_full_backup_and_restore_into_a_scratch_directory(cluster: Cluster):
    leader, _ = cluster.heal()
    node = cluster.node(leader)
    stanza = cluster.settings["cluster"]["scope"]

    def pgbackrest(*args: str, timeout: float = 180) -> str:
        argv = ["pgbackrest", f"--stanza={stanza}", *args]
        return node.enter(argv, user="postgres", timeout=timeout).stdout

    pgbackrest("stanza-create")
    pgbackrest("check")  # WAL archiving through the cluster-wide archive_command works
    cluster.psql.query(
        node.target,
        "DROP TABLE IF EXISTS bkt_backup;"
        "CREATE TABLE bkt_backup AS SELECT g, md5(g::text) AS v FROM generate_series(1, 5000) g",
    )
    expected = cluster.psql.query(node.target, DIGEST)
    assert expected.startswith("5000:")

    pgbackrest("--type=full", "backup")
    info = json.loads(pgbackrest("info", "--output=json"))
    backups = info[0]["backup"]
    assert [b["type"] for b in backups][-1] == "full"

    node.enter(["rm", "-rf", SCRATCH])
    pgbackrest(f"--pg1-path={SCRATCH}", "--type=immediate", "--target-action=promote", "restore")
    # The copy runs beside the node's own PostgreSQL: another port, no TCP, no archiving
    # (it must not push a new timeline into the node's repository).
    options = (
        "-c port=5499 -c listen_addresses='' -c unix_socket_directories=/tmp -c archive_mode=off"
    )
    pg_ctl = [f"{PG_BIN}/pg_ctl", "-D", SCRATCH, "-w", "-t", "120"]
    node.enter(
        [*pg_ctl, "-o", options, "-l", "/tmp/restore-scratch.log", "start"],
        user="postgres",
        timeout=150,
    )
    try:
        psql = [
            f"{PG_BIN}/psql",
            "--no-psqlrc",
            "-X",
            "-At",
            "-h",
            "/tmp",
            "-p",
            "5499",
            "-d",
            "postgres",
        ]

        def promoted() -> bool:
            res = node.enter([*psql, "-c", "SELECT pg_is_in_recovery()"], user="postgres")
            return res.stdout.strip() == "f"

        # Recovery stops at the backup's consistent point, then the copy promotes itself.
        wait_for("the restored copy to finish recovery", promoted, 60)
        restored = node.enter([*psql, "-c", DIGEST], user="postgres").stdout.strip()
    finally:
        node.enter([*pg_ctl, "-m", "fast", "stop"], user="postgres", timeout=150, check=False)
        node.enter(["rm", "-rf", SCRATCH], check=False)
    assert restored == expected
