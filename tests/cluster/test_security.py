"""Scenario 8: who may talk to the cluster. The REST API refuses a switchover without
credentials; PostgreSQL refuses non-TLS connections and md5 logins from the cluster network,
and any connection from outside the configured networks.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from harness import OUTSIDER_UNDERLAY, Cluster
from netns import run
from pgclient import Psql


def test_switchover_without_credentials_is_refused(cluster: Cluster):
    leader, replica = cluster.heal()
    address = cluster.node(leader).address
    body = {"leader": leader, "candidate": replica}

    # Neither client certificate nor password: refused before anything else is looked at.
    bare = cluster.rest.call(address, "POST", "/switchover", body, auth=False, cert=False)
    assert bare.status == 403, bare
    # A client certificate from the cluster CA, but no password.
    no_password = cluster.rest.call(address, "POST", "/switchover", body, auth=False)
    assert no_password.status == 401, no_password
    wrong = dataclasses.replace(cluster.rest, password=secrets.token_urlsafe(16))
    bad_password = wrong.call(address, "POST", "/switchover", body)
    assert bad_password.status == 401, bad_password

    assert cluster.leader() == leader
    resp = cluster.rest.get(address, "/cluster")
    assert "scheduled_switchover" not in resp.body


def test_non_tls_connection_from_the_cluster_network_is_refused(cluster: Cluster):
    leader, _ = cluster.heal()
    target = cluster.node(leader).target
    plain = cluster.psql.run(target, "SELECT 1", sslmode="disable")
    assert plain.returncode != 0
    assert "no encryption" in plain.stderr
    # The same client with TLS gets in: the refusal is about TLS, not reachability.
    assert cluster.psql.query(target, "SELECT 1") == "1"


def test_md5_login_from_the_cluster_network_is_refused(cluster: Cluster):
    leader, _ = cluster.heal()
    target = cluster.node(leader).target
    md5_pw, scram_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    # Through stdin, so the passwords never appear on a command line.
    cluster.psql.query(
        target,
        None,
        stdin=(
            "DROP ROLE IF EXISTS bkt_md5; DROP ROLE IF EXISTS bkt_scram;\n"
            "SET password_encryption = 'md5';\n"
            f"CREATE ROLE bkt_md5 LOGIN PASSWORD '{md5_pw}';\n"
            "SET password_encryption = 'scram-sha-256';\n"
            f"CREATE ROLE bkt_scram LOGIN PASSWORD '{scram_pw}';\n"
        ),
    )
    stored = cluster.psql.query(
        target, "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'bkt_md5'"
    )
    assert stored == "md5"

    md5_user = dataclasses.replace(cluster.psql, user="bkt_md5", password=md5_pw)
    refused = md5_user.run(target, "SELECT 1")
    assert refused.returncode != 0
    assert 'password authentication failed for user "bkt_md5"' in refused.stderr
    scram_user = dataclasses.replace(cluster.psql, user="bkt_scram", password=scram_pw)
    assert scram_user.query(target, "SELECT current_user") == "bkt_scram"


def test_connection_from_outside_the_configured_networks_is_refused(cluster: Cluster):
    leader, _ = cluster.heal()
    node = cluster.node(leader)
    outsider = cluster.net.hosts["out"]
    # The outsider sits on the underlay (198.18.0.99) and routes straight to the node's
    # overlay address, bypassing Nebula: PostgreSQL sees a source outside allowed_networks.
    run(
        "ip",
        "-n",
        outsider.netns,
        "route",
        "replace",
        f"{node.address}/32",
        "via",
        node.host.underlay,
    )
    client = Psql(outsider.netns, cluster.ca, password=cluster.psql.password)
    refused = client.run(node.target, "SELECT 1")
    assert refused.returncode != 0
    assert f'pg_hba.conf rejects connection for host "{OUTSIDER_UNDERLAY}"' in refused.stderr


def test_admin_role_from_post_bootstrap_logs_in_with_its_password(cluster: Cluster):
    """The node only ever saw the admin's SCRAM verifier; the password itself works."""
    leader, _ = cluster.heal()
    target = cluster.node(leader).target
    admin_password = (Path(cluster.settings["state_dir"]) / "secrets" / "admin").read_text().strip()
    admin = dataclasses.replace(cluster.psql, user="admin", password=admin_password)
    assert admin.query(target, "SELECT current_user") == "admin"
    flags = admin.query(
        target, "SELECT rolcreaterole, rolcreatedb, rolsuper FROM pg_roles WHERE rolname = 'admin'"
    )
    assert flags == "t|t|f"
    wrong = dataclasses.replace(admin, password=secrets.token_urlsafe(16))
    assert wrong.run(target, "SELECT 1").returncode != 0
