"""The cluster's lifecycle on real guests: `invoke launch` waiting for a healthy cluster from the
consoles, `status`, `roll` (under a synchronous-mode writer; refused; interrupted and re-run),
`replace` and `destroy`, all through the cloud APIs only, as an operator runs them.

One cluster serves the module, in synchronous mode (tests/cloud/outside.py puts the lighthouse and
the etcd members outside both environments). The scenarios run in file order and each leaves a
healthy cluster for the next; `destroy` and the new launch of the same scope come last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import WriterLog, wait_for

from tests.helpers import INVOKE, PROJECT
from tests.sigterm import teardown_first

from .outside import LaunchedCluster
from .workflow import cloud_env, cluster_config, end_cluster, own_images, prop, run_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]
NODES = ("e1-postgresql-0", "e2-postgresql-0")
SCOPE = "patroni42"  # tests/helpers.base_config's
TASK_TIMEOUT = 900  # a roll of two nodes on a loaded machine takes minutes


@dataclass
class Lifecycle:
    """The module's cluster, its config and what the tests share."""

    cloud: object
    config: Path
    cluster: LaunchedCluster
    conns: dict
    admin: object
    state_dir: Path
    launch_output: str = ""
    facts: dict = field(default_factory=dict)

    def attach(self) -> None:
        """Look at the cluster's servers again (a roll or a replace gives nodes new ones)."""
        self.cluster.attach(self.conns, self.admin)

    def servers(self) -> dict[str, tuple[str, str]]:
        """Node -> (server id, image id), from Nova."""
        found = {}
        for conn in self.conns.values():
            for server in conn.compute.servers():
                if (server.metadata or {}).get("bakery_cluster") == SCOPE:
                    found[server.name] = (server.id, server.image["id"])
        return found

    def ports(self) -> dict[str, str]:
        """Port name -> id of the cluster's ports."""
        return {
            port.name: port.id
            for conn in self.conns.values()
            for port in conn.network.ports()
            if "bakery" in (port.tags or []) and port.name.startswith("bakery-e")
        }

    def newest(self) -> dict[str, str]:
        """Environment -> the id of its newest released generation."""
        found = {}
        for name, conn in self.conns.items():
            released = [i for i in own_images(conn) if prop(i, "bakery_status") == "released"]
            found[name] = max(released, key=lambda i: i.created_at).id
        return found

    def bake(self) -> dict[str, str]:
        result = task(self, "bake")
        assert result.returncode == 0, result.stderr
        return self.newest()


def task(life: Lifecycle, *args: str, timeout: float = TASK_TIMEOUT) -> subprocess.CompletedProcess:
    """The real command line, as an operator runs it (off a terminal: plain progress lines)."""
    return subprocess.run(
        [str(INVOKE), "--search-root", str(PROJECT), "-f", str(life.config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **cloud_env(life.cloud)},
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def life(cloud, released, tmp_path_factory, cloud_report, request):
    """The outside, then `invoke launch --az a --az b` (which waits for a healthy cluster)."""
    base = tmp_path_factory.mktemp("lifecycle")
    changes = {
        "cluster.patroni.synchronous_mode": True,
        "lifecycle.launch_timeout": 600,
        "lifecycle.node_timeout": 600,
        "lifecycle.stop_timeout": 120,
    }
    config = cluster_config(base, **changes)
    assert run_task(cloud, config, "ca").returncode == 0
    conns = {name: cloud.connect(name) for name in cloud.clouds}
    cluster = LaunchedCluster(config=config)
    life = Lifecycle(
        cloud, config, cluster, conns, cloud.connect(cloud.admin_cloud), base / "state"
    )
    failed_before = request.session.testsfailed
    try:
        cluster.start_outside()
        started = time.monotonic()
        result = task(life, "launch", "--az", "a", "--az", "b")
        took = time.monotonic() - started
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        life.launch_output = result.stdout
        life.attach()
        cloud_report.append(f"lifecycle: launch waited {took:.0f} s for a healthy cluster")
        yield life
    finally:
        with teardown_first():
            end_cluster(cluster, conns.values(), request.session.testsfailed != failed_before)


# --- watching the cluster while it changes ------------------------------------------------------
class DownWatch:
    """Polls every node's REST API (GET /patroni, from outside) once a second: a node is down
    when it does not answer `running`. Two nodes seen down together are looked at again at once,
    so that one slow answer on a loaded machine is not taken for an outage."""

    def __init__(self, cluster: LaunchedCluster):
        self.cluster = cluster
        self.samples: list[tuple[float, frozenset[str]]] = []
        self.leaders: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DownWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _down(self) -> tuple[frozenset[str], str | None]:
        answers = {name: self.cluster.status(name) for name in NODES}
        down = frozenset(n for n, a in answers.items() if not a or a.get("state") != "running")
        leader = next((n for n, a in answers.items() if a and a.get("role") == "primary"), None)
        return down, leader

    def _run(self) -> None:
        while not self._stop.wait(1):
            down, leader = self._down()
            if len(down) > 1:
                down, leader = self._down()
            self.samples.append((time.monotonic(), down))
            if leader and (not self.leaders or self.leaders[-1] != leader):
                self.leaders.append(leader)

    def both_down(self) -> list[float]:
        return [t for t, down in self.samples if len(down) > 1]

    def ever_down(self) -> set[str]:
        return {name for _, down in self.samples for name in down}


def timeline(cluster: LaunchedCluster) -> int:
    leader = cluster.leader()
    return int(cluster.status(leader)["timeline"])


def sync_standby(cluster: LaunchedCluster) -> str | None:
    return next((m["name"] for m in cluster.members() or [] if m["role"] == "sync_standby"), None)


# --- the scenarios -------------------------------------------------------------------------------
def test_launch_waited_for_a_healthy_cluster_and_status_agrees_with_the_rest_apis(life):
    c = life.cluster
    # Launch returned only once the consoles said healthy: the REST APIs say so at once.
    leader, replica = c.wait_healthy(5)
    assert f"cluster {SCOPE}: healthy, leader {leader}" in life.launch_output
    assert "launched 2 node(s), 0 existed" in life.launch_output

    result = task(life, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cluster {SCOPE}: healthy, leader {leader}" in result.stdout
    for name in NODES:
        assert any(
            line.startswith(name) and " current " in line for line in result.stdout.split("\n")
        ), result.stdout

    wait_for(f"{replica} as synchronous standby", lambda: sync_standby(c) == replica, 60)
    doc = wait_for("status --json agreeing with the REST APIs", lambda: _agreeing(life), 120)
    assert doc["status"] == "healthy" and doc["exit_code"] == 0 and doc["leader"] == leader
    images = life.newest()
    for node in doc["nodes"]:
        assert node["server"]["status"] == "ACTIVE"
        assert node["image"]["generation"] == "current"
        assert node["image"]["id"] == images[life.cloud.clouds[NODES.index(node["name"])]]

    # A second launch finds both nodes and leaves them alone.
    before = life.servers()
    again = task(life, "launch", "--az", "a", "--az", "b")
    assert again.returncode == 0, again.stderr
    assert "launched 0 node(s), 2 existed" in again.stdout
    assert life.servers() == before


def _agreeing(life: Lifecycle) -> dict | None:
    """`status --json` when each node's report says what its REST API says (role, state,
    timeline, replication state, the synchronous standby), else None."""
    result = task(life, "status", "--json")
    if result.returncode != 0:
        return None
    doc = json.loads(result.stdout)
    c = life.cluster
    members = {m["name"]: m for m in c.members() or []}
    for node in doc["nodes"]:
        live, report = c.status(node["name"]), node["report"]
        if live is None or report is None:
            return None
        said = (report["role"], report["state"], report["timeline"], report["replication"])
        live_said = (
            live["role"],
            live["state"],
            live.get("timeline"),
            live.get("replication_state"),
        )
        if said != live_said:
            return None
        if report["sync_standby"] != (members.get(node["name"], {}).get("role") == "sync_standby"):
            return None
    return doc


def test_roll_refused_while_a_replica_is_down_changes_nothing(life):
    c = life.cluster
    leader, replica = c.heal()
    life.facts["generation 2"] = life.bake()
    before, ports = life.servers(), life.ports()
    c.stop_server(replica)
    try:
        result = task(life, "roll")
        assert result.returncode == 1, result.stdout + result.stderr
        (error,) = [line for line in result.stderr.splitlines() if "roll refused" in line]
        assert f"{replica}: server SHUTOFF" in error and "nothing was changed" in error, error
        assert life.servers() == before and life.ports() == ports
        assert not (life.state_dir / f"roll-{SCOPE}.json").exists()
    finally:
        c.start_server(replica)
    c.wait_healthy(180)


def test_roll_under_a_synchronous_writer_loses_no_acknowledged_commit(life, cloud_report):
    c = life.cluster
    leader, replica = c.heal()
    target = life.facts["generation 2"]
    wait_for(f"{replica} as synchronous standby", lambda: sync_standby(c) == replica, 60)
    tl = timeline(c)
    sql = "DROP TABLE IF EXISTS bkl_roll; CREATE TABLE bkl_roll (id int PRIMARY KEY)"
    c.psql.query(c.node(leader).target, sql)
    writer = c.start_writer("bkl_roll", seconds=TASK_TIMEOUT)
    try:
        wait_for("20 acknowledged commits", lambda: len(WriterLog.read(writer).acked) >= 20, 60)
        with DownWatch(c) as watch:
            started = time.monotonic()
            result = task(life, "roll")
            took = time.monotonic() - started
            rolled_at = time.time()
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        life.attach()
        new_leader = c.wait_leader(60)[0]
        wait_for(
            "commits acknowledged by the new leader after the roll",
            lambda: len(WriterLog.read(writer).acked_by(new_leader, rolled_at)) >= 10,
            120,
        )
    finally:
        c.sup.stop(writer, signal.SIGTERM, timeout=15)
    log = WriterLog.read(writer)
    rows = c.psql.query(c.node(new_leader).target, "SELECT id FROM bkl_roll")
    lost = sorted(set(log.acked) - {int(r) for r in rows.split()})
    times = sorted(epoch for _, epoch in log.acked.values())
    interruption = max(b - a for a, b in zip(times, times[1:], strict=False))
    cloud_report.append(
        f"roll: {len(NODES)} nodes in {took:.0f} s, write interruption {interruption:.1f} s, "
        f"acknowledged commits lost {len(lost)}"
    )
    # The plan: the replica first, the leader last (after its handover).
    plan = [line for line in result.stdout.splitlines() if line.startswith("bakery: 1. ")]
    plan += [line for line in result.stdout.splitlines() if line.startswith("bakery: 2. ")]
    assert [line.split()[2] for line in plan] == [replica, leader], plan
    assert "(replica, " in plan[0] and "(leader, " in plan[1], plan
    assert f"rolled {len(NODES)} node(s)" in result.stdout
    assert on_images(life) == target
    # The leader changed exactly once, to the synchronous standby (one new timeline).
    assert new_leader == replica
    assert watch.leaders == [leader, replica], watch.leaders
    assert timeline(c) == tl + 1
    assert watch.both_down() == [], "two nodes were down at once"
    assert watch.ever_down() == set(NODES)  # each was replaced
    assert lost == []


def on_images(life: Lifecycle) -> dict[str, str]:
    """Environment -> the image its node's server runs (one node per environment)."""
    servers = life.servers()
    assert sorted(servers) == sorted(NODES), servers
    return {env: servers[node][1] for env, node in zip(life.cloud.clouds, NODES, strict=True)}


def test_an_interrupted_roll_is_finished_by_the_next_one_never_two_nodes_down(life):
    """`rebuild --force --roll` (a new generation, then the roll) is stopped with SIGTERM while
    the replica's server is being deleted; `invoke roll` then finishes that node first and
    the rest after it."""
    c = life.cluster
    leader, replica = c.heal()
    ports, previous = life.ports(), life.newest()
    journal = life.state_dir / f"roll-{SCOPE}.json"
    with DownWatch(c) as watch:
        argv = [str(INVOKE), "--search-root", str(PROJECT), "-f", str(life.config)]
        proc = subprocess.Popen(
            [*argv, "rebuild", "--force", "--roll"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **cloud_env(life.cloud), "PYTHONUNBUFFERED": "1"},
        )
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            wait_for(
                f"the roll deleting {replica}'s server",
                lambda: any(f"bakery: {replica}: deleting server" in line for line in seen),
                TASK_TIMEOUT,
                every=0.2,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            reader.join(10)
        assert proc.returncode == 143, "".join(seen)[-3000:]
        assert json.loads(journal.read_text())["node"] == replica
        target = life.newest()
        assert target != previous  # the rebuild released a new generation

        result = task(life, "roll")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    # It went on with the node in transition (whatever state the interrupt left its server in).
    plan = [line for line in result.stdout.splitlines() if line.startswith("bakery: 1. ")]
    assert plan and plan[0].startswith(f"bakery: 1. {replica} ("), result.stdout
    life.attach()
    c.wait_healthy(60)
    assert on_images(life) == target
    assert life.ports() == ports  # every node kept its port; nothing was left behind
    assert not journal.exists()
    assert watch.both_down() == [], "two nodes were down at once"


def test_replace_after_a_hard_power_off_and_delete_of_a_replica(life):
    c = life.cluster
    leader, replica = c.heal()
    c.psql.query(
        c.node(leader).target,
        "DROP TABLE IF EXISTS bkl_replace; CREATE TABLE bkl_replace (note text PRIMARY KEY);"
        "INSERT INTO bkl_replace VALUES ('before')",
    )
    ports = life.ports()
    conn, server_id = c.servers[replica]
    server = conn.compute.get_server(server_id)
    conn.compute.delete_server(server)  # the test cloud's delete is a power cut
    conn.compute.wait_for_delete(server, interval=1, wait=120)
    c.psql.query(c.node(leader).target, "INSERT INTO bkl_replace VALUES ('while-gone')")

    result = task(life, "replace", replica)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert f"{replica}: no server -> " in result.stdout
    life.attach()
    c.wait_streaming(120, name=replica)
    assert c.leader() == leader

    def rows() -> set[str]:
        return set(c.psql.query(c.node(replica).target, "SELECT note FROM bkl_replace").split())

    wait_for(f"both rows on {replica}", lambda: rows() == {"before", "while-gone"}, 60)
    assert life.ports() == ports  # on its port
    assert on_images(life) == life.newest()


def test_destroy_then_a_new_launch_of_the_same_scope_bootstraps(life, cloud_report):
    c = life.cluster
    leader, _ = c.heal()
    c.psql.query(c.node(leader).target, "CREATE TABLE bkl_old (note text)")
    before = life.servers()

    def images() -> set[str]:
        return {i.id for conn in life.conns.values() for i in own_images(conn)}

    images_before = images()
    refused = task(life, "destroy")
    assert refused.returncode == 1
    assert "add --yes to do it; nothing was changed" in refused.stderr
    assert life.servers() == before

    result = task(life, "destroy", "--yes")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "deleted 2 server(s) and 2 port(s)" in result.stdout
    # The DCS is out of this machine's reach (lifecycle.dcs_url unset): it says what to do.
    namespace = c.settings["cluster"]["namespace"]
    assert f"`etcdctl del --prefix /{namespace}/{SCOPE}/`" in result.stdout
    assert life.servers() == {} and life.ports() == {}
    assert images() == images_before  # images are left alone
    c.clear_dcs()  # what that command does, through etcd's JSON gateway

    started = time.monotonic()
    again = task(life, "launch", "--az", "a", "--az", "b")
    took = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "launched 2 node(s), 0 existed" in again.stdout
    cloud_report.append(f"lifecycle: destroy, then a new launch healthy after {took:.0f} s")
    life.attach()
    c.wait_healthy(30)
    # A new cluster: bootstrapped afresh (timeline 1), without the old one's table.
    assert timeline(c) == 1
    leader = c.leader()
    assert c.psql.query(c.node(leader).target, "SELECT to_regclass('bkl_old')").strip() == ""
