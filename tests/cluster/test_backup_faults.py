"""A repository that refuses the cluster: wrong S3 credentials from the first boot, and an
untrusted certificate. The new cluster is not thrown away (Patroni elects a leader and the
replica joins through pg_basebackup), the stanza creation fails with pgBackRest's own line
naming the problem, and the node's status file says so; the scheduled backup fails visibly.
"""

from __future__ import annotations

import json

import pytest
from backup_jobs import run_timer_job
from conftest import make_cluster
from harness import Cluster
from nodes import Node
from s3 import S3Server
from test_backup import FULL, s3_overrides


@pytest.fixture(scope="module")
def refused_cluster(request, s3: S3Server):
    wrong = s3.write_secret("wrong-key-secret", "not-the-secret-of-this-server")
    overrides = s3_overrides(s3, repo=s3.repo(key_secret={"file": str(wrong)}))
    yield from make_cluster(request, overrides, s3=s3, label="S3 repository, wrong key secret")


def status(node: Node, job: str) -> dict:
    return json.loads(node.file(f"/var/lib/bakery/status/{job}.json").read_text())


def test_wrong_credentials_fail_the_stanza_but_not_the_new_cluster(refused_cluster: Cluster):
    cluster = refused_cluster
    cluster.s3.attach(cluster.net)
    leader, replica = cluster.heal()  # bootstrapped, and the replica streams (basebackup)
    node = cluster.node(leader)
    record = status(node, "stanza")
    assert record["ok"] is False
    assert record["detail"].startswith("stanza-create: [039]: HTTP request failed with 403")
    assert "Traceback" not in cluster.patroni_log(leader)
    assert "bakery-pgbackrest: stanza failed: stanza-create: [039]" in cluster.patroni_log(leader)
    secret = cluster.s3.base.joinpath("wrong-key-secret").read_text().strip()
    assert secret not in json.dumps(record)

    # The scheduled backup on the leader fails the same way, visibly.
    job = run_timer_job(node, FULL)
    assert job.returncode == 1
    assert "backup failed: stanza-create: [039]: HTTP request failed with 403" in job.stderr
    backup = status(node, "backup")
    assert backup["ok"] is False and "403 (Forbidden)" in backup["detail"]
    # ... and on the replica it does nothing and says why.
    skipped = run_timer_job(cluster.node(replica), FULL)
    assert skipped.returncode == 0 and "is not the leader" in skipped.stdout


def test_an_untrusted_certificate_fails_the_stanza_within_seconds(refused_cluster: Cluster):
    cluster = refused_cluster
    cluster.s3.attach(cluster.net)
    leader, _ = cluster.heal()
    node = cluster.node(leader)
    # The job as post_bootstrap runs it, trusting only the system's CAs (PGBACKREST_* variables
    # are pgBackRest's own way to set an option).
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/var/lib/postgresql",
        "PGBACKREST_REPO1_STORAGE_CA_FILE": "/etc/ssl/certs/ca-certificates.crt",
    }
    job = ["/usr/lib/bakery/pgbackrest/bakery-pgbackrest", "stanza"]
    res = node.enter(job, user="postgres", env=env, timeout=120, check=False)
    assert res.returncode == 1
    record = status(node, "stanza")
    assert record["ok"] is False
    assert record["detail"].startswith("stanza-create: [095]: unable to verify certificate"), record
    assert "s3.bkt.test" in record["detail"]
