"""launch, status, roll, replace and destroy on the stand-in cloud (fakecloud.py): the order of
work, the refusals, the resumption after an interrupt, and who is down when. The cloud tier runs
them against a real OpenStack and real guests."""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from bakery.ca import create_missing
from bakery.cloud import cluster as cloud_cluster
from bakery.cloud import dcs as cluster_dcs
from bakery.cloud import launch as launch_module
from bakery.cloud import watch
from bakery.cloud.api import PreflightError
from bakery.cloud.destroy import destroy
from bakery.cloud.launch import launch
from bakery.cloud.replace import replace
from bakery.cloud.roll import NothingToRoll, RollRefused, roll
from bakery.cloud.status import as_json, as_text, status
from bakery.config import load_settings
from bakery.errors import BakeryError
from bakery.lock import Locked
from tests.helpers import DELETE, base_config, merged
from tests.unit.fakecloud import Cloud, Interrupt

NODES = ["prod1-postgresql-0", "prod1-postgresql-1", "prod4-postgresql-0"]


@pytest.fixture
def cloud(monkeypatch):
    cloud = Cloud()
    cloud.known = set(NODES)
    fake_connect = lambda label, environment: cloud.conn(label)  # noqa: E731
    monkeypatch.setattr(launch_module, "connect", fake_connect)
    monkeypatch.setattr(cloud_cluster, "connect", fake_connect)
    monkeypatch.setattr(watch, "POLL", 0.05)
    for env in ("prod1", "prod4"):
        cloud.conn(env).add_image("gen-1", "build-1", hours_ago=5)
    return cloud


def make_settings(tmp_path, **changes):
    config = merged(
        base_config(tmp_path, dcs="etcd3", overlay=False),
        **{
            "azs.a.nodes": 2,
            "azs.a.subnet": DELETE,
            "azs.a.addresses": DELETE,
            "azs.b.subnet": DELETE,
            "azs.b.addresses": DELETE,
            "lifecycle.node_timeout": 60,
            "lifecycle.launch_timeout": 60,
        },
        **changes,
    )
    settings = load_settings(config)
    create_missing(settings)
    return settings


def quiet(line: str) -> None:
    pass


def launched(cloud, tmp_path, **changes):
    settings = make_settings(tmp_path, **changes)
    result = launch(settings, [], log=quiet)
    cloud.events.clear()
    return settings, result


def release(cloud, name: str = "gen-2", build: str = "build-2") -> None:
    for conn in cloud.conns.values():
        conn.add_image(name, build, hours_ago=0)


def servers(cloud) -> dict[str, str]:
    """node name -> the image name its server runs"""
    return {
        s.name: cloud.conns[env].images[s.image["id"]].name
        for env, conn in cloud.conns.items()
        for s in conn.servers.values()
    }


# -- launch -----------------------------------------------------------------------------------


def test_launch_waits_for_a_healthy_cluster_then_a_second_launch_changes_nothing(cloud, tmp_path):
    lines = []
    settings = make_settings(tmp_path)
    result = launch(settings, [], log=lines.append)
    assert sorted(n.name for n in result.nodes) == NODES
    assert all(n.created for n in result.nodes)
    health = result.view.health()
    assert health.healthy and health.leader == "prod1-postgresql-0"
    assert "waiting for a healthy cluster (at most 60 s)" in lines
    # Plain lines while waiting (not a terminal): one per change of a node's line.
    assert any(line.startswith("prod4-postgresql-0, server ACTIVE, replica") for line in lines)

    cloud.events.clear()
    again = launch(settings, [], log=lines.append)
    assert cloud.events == []
    assert [n.created for n in again.nodes] == [False, False, False]


def test_launch_boots_a_missing_server_on_its_existing_port(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    conn = cloud.conns["prod1"]
    (server,) = [s for s in conn.servers.values() if s.name == "prod1-postgresql-1"]
    port = next(p for p in conn.ports.values() if p.name == "bakery-prod1-postgresql-1")
    conn.compute.delete_server(server)
    cloud.events.clear()
    result = launch(settings, ["a"], log=quiet)
    assert cloud.events == ["create_server prod1-postgresql-1"]
    assert port.device_id and port.id in {p.id for p in conn.ports.values()}
    assert {n.name: n.created for n in result.nodes} == {
        "prod1-postgresql-0": False,
        "prod1-postgresql-1": True,
    }


def test_launch_of_a_new_cluster_refuses_leftover_dcs_keys(cloud, tmp_path, monkeypatch):
    settings = make_settings(tmp_path, **{"lifecycle.dcs_url": "http://192.0.2.5:2379"})
    leftover = cluster_dcs.ScopeKeys(
        "/terra42/patroni42/", ["/terra42/patroni42/initialize", "/terra42/patroni42/config"]
    )
    monkeypatch.setattr(cluster_dcs.Dcs, "keys", lambda self: leftover)
    with pytest.raises(PreflightError) as refused:
        launch(settings, [], log=quiet)
    message = str(refused.value)
    assert (
        "the DCS still holds 2 key(s) of an earlier cluster patroni42 under /terra42/patroni42/"
        in message
    )
    assert "etcdctl del --prefix /terra42/patroni42/" in message
    assert cloud.events == []


# -- status -----------------------------------------------------------------------------------


def test_status_rows_json_and_exit_codes(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    result = status(settings)
    assert result.exit_code == 0 and result.leader == "prod1-postgresql-0"
    text = as_text(result)
    assert "cluster patroni42: healthy, leader prod1-postgresql-0" in text
    assert (
        "gen-1 released (newest released), in use by prod1-postgresql-0, prod1-postgresql-1" in text
    )
    doc = json.loads(json.dumps(as_json(result)))
    assert doc["version"] == 1 and doc["status"] == "healthy" and doc["exit_code"] == 0
    node = doc["nodes"][1]
    assert node["name"] == "prod1-postgresql-1"
    assert node["image"]["generation"] == "current"
    assert (node["report"]["role"], node["report"]["replication"]) == ("replica", "streaming")
    assert {g["name"] for e in doc["environments"] for g in e["generations"]} == {"gen-1"}

    release(cloud)
    outdated = as_json(status(settings))
    assert {n["image"]["generation"] for n in outdated["nodes"]} == {"outdated"}

    conn = cloud.conns["prod4"]
    conn.compute.stop_server(next(iter(conn.servers.values())))
    stopped = status(settings)
    assert stopped.exit_code == 1
    assert "prod4-postgresql-0: server SHUTOFF" in stopped.problems
    # Only AZ a shown: its leader is there, it is healthy.
    assert status(settings, ["a"]).exit_code == 0


def test_status_of_a_cluster_no_node_of_which_answers_is_2(cloud, tmp_path):
    settings = make_settings(tmp_path)
    result = status(settings)
    assert result.exit_code == 2 and "no node of the cluster exists" in result.problems


# -- roll -------------------------------------------------------------------------------------


def test_roll_replicas_first_leader_last_after_one_handover(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    release(cloud)
    lines = []
    result = roll(settings, log=lines.append)
    assert [r.node for r in result.done] == [
        "prod1-postgresql-1",
        "prod4-postgresql-0",
        "prod1-postgresql-0",
    ]
    assert servers(cloud) == dict.fromkeys(NODES, "gen-2")
    handovers = [e for e in cloud.events if e.startswith("handover")]
    assert handovers == ["handover prod1-postgresql-0 -> prod1-postgresql-1"]
    assert cloud.down_log == []  # never two nodes down
    stops = [e for e in cloud.events if e.startswith(("stop_server", "create_server"))]
    assert stops == [
        "stop_server prod1-postgresql-1",
        "create_server prod1-postgresql-1",
        "stop_server prod4-postgresql-0",
        "create_server prod4-postgresql-0",
        "stop_server prod1-postgresql-0",
        "create_server prod1-postgresql-0",
    ]
    assert not (settings.state_dir / "roll-patroni42.json").exists()
    assert status(settings).exit_code == 0


def test_roll_in_synchronous_mode_hands_over_to_the_sync_standby(cloud, tmp_path):
    cloud.synchronous = True
    settings, _ = launched(cloud, tmp_path, **{"cluster.patroni.synchronous_mode": True})
    release(cloud)
    roll(settings, log=quiet)
    (handover,) = [e for e in cloud.events if e.startswith("handover")]
    assert handover.startswith("handover prod1-postgresql-0 -> ")
    assert cloud.down_log == []


def test_dry_run_prints_the_plan_and_changes_nothing(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    release(cloud)
    lines = []
    result = roll(settings, dry_run=True, log=lines.append)
    assert lines == [
        "1. prod1-postgresql-1 (replica, AZ a): gen-1 -> gen-2",
        "2. prod4-postgresql-0 (replica, AZ b): gen-1 -> gen-2",
        "3. prod1-postgresql-0 (leader, AZ a): gen-1 -> gen-2 (after a handover to a replica "
        "on the new generation)",
    ]
    assert len(result.steps) == 3 and result.done == []
    assert cloud.events == []


def test_nothing_to_roll_is_an_error_that_changes_nothing(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    with pytest.raises(NothingToRoll, match="nothing to roll: every node runs gen-1"):
        roll(settings, log=quiet)
    assert cloud.events == []


def test_roll_refused_while_a_replica_is_down(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    release(cloud)
    conn = cloud.conns["prod4"]
    conn.compute.stop_server(next(iter(conn.servers.values())))
    cloud.events.clear()
    with pytest.raises(RollRefused) as refused:
        roll(settings, log=quiet)
    assert str(refused.value) == (
        "roll refused: the cluster is not healthy: prod4-postgresql-0: server SHUTOFF; "
        "prod4-postgresql-0: reporter stopped; nothing was changed"
    )
    assert cloud.events == []


def test_an_interrupted_roll_continues_where_it_stopped(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    release(cloud)
    cloud.interrupt_on = "create_server prod4-postgresql-0"  # Ctrl-C during a replacement
    with pytest.raises(Interrupt):
        roll(settings, log=quiet)
    journal = json.loads((settings.state_dir / "roll-patroni42.json").read_text())
    assert journal["node"] == "prod4-postgresql-0" and journal["to"] == "gen-2"
    assert "prod4-postgresql-0" not in servers(cloud)  # stopped, deleted, not booted yet
    cloud.events.clear()
    result = roll(settings, log=quiet)
    assert [r.node for r in result.done] == ["prod4-postgresql-0", "prod1-postgresql-0"]
    assert cloud.events[0] == "create_server prod4-postgresql-0"  # its port is still there
    assert servers(cloud) == dict.fromkeys(NODES, "gen-2")
    assert cloud.down_log == []
    assert not (settings.state_dir / "roll-patroni42.json").exists()


def test_a_roll_interrupted_after_booting_waits_for_that_node_first(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    release(cloud)
    cloud.interrupt_on = "stop_server prod4-postgresql-0"  # the second node's turn
    with pytest.raises(Interrupt):
        roll(settings, log=quiet)
    # prod1-postgresql-1 is done; the interrupt hit before prod4's stop: it is untouched.
    assert servers(cloud)["prod1-postgresql-1"] == "gen-2"
    assert servers(cloud)["prod4-postgresql-0"] == "gen-1"
    result = roll(settings, log=quiet)
    assert [r.node for r in result.done] == ["prod4-postgresql-0", "prod1-postgresql-0"]
    assert cloud.down_log == []


# -- the lock, replace ------------------------------------------------------------------------


def hold_lock(settings):
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.state_dir / "lifecycle-patroni42.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, b"roll (pid 4242, since 03:00:00Z)\n")
    return fd


def test_roll_and_replace_refuse_while_another_run_holds_the_lock(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    release(cloud)
    fd = hold_lock(settings)
    try:
        for run in (lambda: roll(settings, log=quiet), lambda: replace(settings, NODES[1], quiet)):
            with pytest.raises(Locked) as locked:
                run()
            assert str(locked.value) == (
                f"roll (pid 4242, since 03:00:00Z) holds "
                f"{settings.state_dir / 'lifecycle-patroni42.lock'}; nothing was done"
            )
    finally:
        os.close(fd)
    assert cloud.events == []


def test_replace_of_an_unknown_node_names_the_known_ones(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    with pytest.raises(BakeryError) as unknown:
        replace(settings, "prod9-postgresql-0", log=quiet)
    assert str(unknown.value) == (
        "replace: no node 'prod9-postgresql-0' in this config; nodes: " + ", ".join(NODES)
    )
    assert cloud.events == []


def test_replace_after_a_hard_delete_boots_on_the_same_port(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    conn = cloud.conns["prod4"]
    port = next(iter(conn.ports.values()))
    conn.compute.delete_server(next(iter(conn.servers.values())))  # power-off and delete
    cloud.events.clear()
    done = replace(settings, "prod4-postgresql-0", log=quiet)
    assert done.old_image is None and done.new_image == "gen-1"
    assert cloud.events == ["create_server prod4-postgresql-0"]
    assert list(conn.ports.values()) == [port] and port.device_id
    assert status(settings).exit_code == 0


def test_replace_of_the_healthy_leader_hands_over_first(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    replace(settings, "prod1-postgresql-0", log=quiet)
    assert cloud.events[:2] == [
        "stop_server prod1-postgresql-0",
        "handover prod1-postgresql-0 -> prod1-postgresql-1",
    ]
    assert status(settings).leader == "prod1-postgresql-1"


def test_replace_of_a_healthy_node_while_another_is_down_is_refused(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    conn = cloud.conns["prod4"]
    conn.compute.stop_server(next(iter(conn.servers.values())))
    cloud.events.clear()
    with pytest.raises(BakeryError, match="the cluster is not healthy, and this node is"):
        replace(settings, "prod1-postgresql-1", log=quiet)
    assert cloud.events == []


# -- destroy ----------------------------------------------------------------------------------


def test_destroy_needs_yes_and_changes_nothing_without(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    with pytest.raises(BakeryError) as refused:
        destroy(settings, [], yes=False, log=quiet)
    assert str(refused.value) == (
        "destroy deletes the servers and ports of cluster patroni42 in every AZ: add --yes to "
        "do it; nothing was changed"
    )
    assert cloud.events == []


def test_destroy_stops_replicas_before_the_leader_then_removes_servers_and_ports(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    lines = []
    result = destroy(settings, [], yes=True, log=lines.append)
    stops = [e for e in cloud.events if e.startswith("stop_server")]
    assert stops[-1] == "stop_server prod1-postgresql-0"  # the leader last
    assert not [e for e in cloud.events if e.startswith("handover")]  # no one left to take over
    assert sorted(result.servers) == NODES and len(result.ports) == 3
    assert cloud.all_servers() == [] and all(not c.ports for c in cloud.conns.values())
    assert result.dcs_keys is None
    assert any("etcdctl del --prefix /terra42/patroni42/" in line for line in lines)
    assert {i.name for c in cloud.conns.values() for i in c.images.values()} == {"gen-1"}


def test_destroy_of_one_az_hands_the_leader_over_to_another(cloud, tmp_path):
    settings, _ = launched(cloud, tmp_path)
    destroy(settings, ["a"], yes=True, log=quiet)
    assert "handover prod1-postgresql-0 -> prod4-postgresql-0" in cloud.events or (
        "handover prod1-postgresql-0 -> prod1-postgresql-1" in cloud.events
    )
    assert [s.name for s in cloud.all_servers()] == ["prod4-postgresql-0"]
