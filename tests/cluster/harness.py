"""A whole test cluster: render the bundles, build the network, start the DCS, the overlay and
the nodes; wait on outcomes with deadlines; tear everything down by PID and prove it is gone.

Used by the tests (fixtures in conftest.py) and by bench/cluster_timings.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bundle import render, settings_of, write_config
from infra import Infra
from netns import Network
from nodes import PG_BIN, Node
from pgclient import Psql
from processes import Started, Supervisor, alive, minimal_env, start_time
from restapi import RestApi

from tests.owned_netns import ns_path, owned_name, pids_in_netns

T = TypeVar("T")
# Every cluster of this process, for the session's final leak check, and measured figures.
RUNS: list[Cluster] = []
FACTS: list[str] = []
# Outside /tmp: each node gets a /tmp of its own, which would hide the run's files from it.
BASE = Path(os.environ.get("BAKERY_TEST_TMP", "/var/tmp/bakery-test/cluster"))
UNDERLAY = "198.18.0"  # RFC 2544 benchmark range, and only inside the run's namespaces
DCS_UNDERLAY = f"{UNDERLAY}.1"
OUTSIDER_UNDERLAY = f"{UNDERLAY}.99"
WRITER = Path(__file__).with_name("writer.py")


class Timeout(AssertionError):
    pass


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
        except Exception as error:  # noqa: BLE001 - a failing probe is "not yet"
            value, last = None, error
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(every)


@dataclass
class WriterLog:
    """What the writer client saw: acknowledged rows (id -> node, epoch) and failures."""

    acked: dict[int, tuple[str, float]]
    errors: list[str]
    done: bool

    @classmethod
    def read(cls, proc: Started) -> WriterLog:
        acked, errors, done = {}, [], False
        for line in proc.log.read_text(errors="replace").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "ack":
                row, node, epoch = rest.split()
                acked[int(row)] = (node, float(epoch))
            elif kind == "err":
                errors.append(rest)
            elif kind == "done":
                done = True
        return cls(acked, errors, done)

    def acked_by(self, node: str, after: float = 0.0) -> list[int]:
        return [row for row, (n, t) in self.acked.items() if n == node and t > after]


def never_two_writers(
    seen: dict[str, list[tuple[float, bool | None]]], leader: str, replica: str
) -> tuple[float, float]:
    """From `watch_writers`: the old leader was seen refusing writes before the other node was
    last seen read-only, so its demotion preceded the promotion and there were never two
    writers. Only definite answers count (None is ignored): each bound is the conservative
    one. Returns when the leader was first seen read-only and the replica first writable."""
    old_first_readonly = next((t for t, w in seen[leader] if w is False), None)
    new_first_writer = next((t for t, w in seen[replica] if w is True), None)
    assert old_first_readonly is not None, "the cut-off leader never stopped taking writes"
    assert new_first_writer is not None, "the other node was never promoted"
    new_last_readonly = max(t for t, w in seen[replica] if w is False and t < new_first_writer)
    assert old_first_readonly < new_last_readonly
    assert all(w is not True for t, w in seen[leader] if t >= old_first_readonly)
    return old_first_readonly, new_first_writer


def new_run_id() -> str:
    """`bkt-<pid>-<6 hex>`: the prefix of the run's namespaces, which name their owner."""
    return owned_name("t")


# What psql says when the server takes no connection at all, so no write either.
NOT_SERVING = (
    "No such file or directory",  # no socket: PostgreSQL is not running
    "Connection refused",
    "the database system is starting up",
    "the database system is shutting down",
)


@dataclass
class Cluster:
    overrides: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=new_run_id)
    base: Path = field(init=False)
    sup: Supervisor = field(init=False)
    net: Network = field(init=False)
    infra: Infra | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    # The session's S3 server (s3.py), plugged into this run's switch when given.
    s3: Any = None

    def __post_init__(self) -> None:
        self.base = BASE / self.run_id
        self.base.mkdir(mode=0o755, parents=True)
        # Patroni and PostgreSQL run as postgres and read their files below the base.
        for d in [self.base, *self.base.parents]:
            if not os.stat(d).st_mode & 0o001:
                raise RuntimeError(f"{d} is not searchable by others: postgres cannot reach {d}")
        (self.base / "logs").mkdir()
        self.sup = Supervisor(self.base / "logs")
        self.net = Network(self.run_id)
        RUNS.append(self)

    # --- building -------------------------------------------------------------------------
    def render(self) -> None:
        config = write_config(self.base, self.overrides)
        self.settings = settings_of(config)
        azs = list(self.settings["azs"])
        self.bundles = render(config, self.base / "render", azs, self.base / "logs" / "render.log")

    def build(self) -> None:
        """Everything short of starting Patroni."""
        self.render()
        overlay = self.settings["overlay"]
        lighthouse = overlay["lighthouses"][0]
        dcs_member = self.settings["cluster"]["dcs"]["members"][0]["address"]
        if dcs_member != lighthouse["overlay_address"]:
            raise ValueError("cluster.yaml: the etcd member must sit at the lighthouse's address")
        self.net.create_switch()
        hosts = {}
        if self.s3 is not None:
            self.s3.attach(self.net)
            hosts = self.s3.hosts()
        dcs = self.net.add_host("dcs", DCS_UNDERLAY)
        self.net.add_host("out", OUTSIDER_UNDERLAY)
        for bundle in self.bundles:
            host = self.net.add_host(bundle.az, bundle.underlay)
            node = Node(bundle, host, self.base / "nodes" / bundle.name, self.sup, hosts=hosts)
            node.lay_out()
            self.nodes[bundle.name] = node
        prefix = int(overlay["cidr"].split("/")[1])
        state = Path(self.settings["state_dir"])
        self.infra = Infra(
            dcs,
            self.base / "dcs",
            self.sup,
            lighthouse["overlay_address"],
            prefix,
            int(lighthouse["public_address"].rsplit(":", 1)[1]),
            (state / "nebula" / "ca.crt", state / "nebula" / "ca.key"),
        )
        self.infra.start()
        for node in self.nodes.values():
            node.boot()
            node.start_nebula()
        for node in self.nodes.values():
            node.wait_overlay()
        self.connect_clients(dcs.netns)

    def connect_clients(self, netns: str) -> None:
        """The tests' REST API and psql clients, in `netns`, with the first node's CA and
        credentials."""
        first = next(iter(self.nodes.values()))
        self.ca = str(first.file("/etc/patroni/tls/ca.pem"))
        env = first.patroni_env()
        # The operator's client certificate is a node's, as patronictl's `ctl:` section uses.
        cert = (
            str(first.file("/etc/patroni/tls/node.pem")),
            str(first.file("/etc/patroni/tls/node.key")),
        )
        self.rest = RestApi(
            netns,
            self.ca,
            env["PATRONI_RESTAPI_USERNAME"],
            env["PATRONI_RESTAPI_PASSWORD"],
            cert,
        )
        self.psql = Psql(netns, self.ca, password=env["PATRONI_SUPERUSER_PASSWORD"])

    def start(self) -> None:
        t0 = time.monotonic()
        for node in self.nodes.values():
            node.start_patroni()
            node.start_reporter()
        for node in self.nodes.values():
            node.start_exporters()
        self.times["leader"] = self.wait_leader(60)[1] - t0
        self.times["streaming"] = self.wait_streaming(120)[1] - t0

    # --- observing --------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self.nodes[name]

    def members(self, via: list[str] | None = None) -> list[dict[str, Any]] | None:
        """Patroni's view of the cluster (GET /cluster) from the first node that answers."""
        for name in via or list(self.nodes):
            resp = self.rest.try_get(self.nodes[name].address, "/cluster")
            if resp is not None and resp.status == 200:
                return resp.body["members"]
        return None

    def leader(self, via: list[str] | None = None) -> str | None:
        for m in self.members(via) or []:
            if m["role"] == "leader" and m["state"] == "running":
                return m["name"]
        return None

    def wait_leader(self, timeout: float, not_: str | None = None) -> tuple[str, float]:
        via = [n for n in self.nodes if n != not_] if not_ else None

        def probe() -> str | None:
            name = self.leader(via)
            return name if name and name != not_ else None

        name = wait_for(f"a leader other than {not_}" if not_ else "a leader", probe, timeout)
        return name, time.monotonic()

    def status(self, name: str) -> dict[str, Any] | None:
        """The node's own live status (GET /patroni): role, state, replication_state."""
        resp = self.rest.try_get(self.nodes[name].address, "/patroni")
        return resp.body if resp is not None and resp.status == 200 else None

    def streaming(self, name: str) -> bool:
        st = self.status(name)
        return bool(
            st and st.get("role") == "replica" and st.get("replication_state") == "streaming"
        )

    def wait_streaming(self, timeout: float, name: str | None = None) -> tuple[str, float]:
        def probe() -> str | None:
            for n in [name] if name else list(self.nodes):
                if self.streaming(n):
                    return n
            return None

        return wait_for(f"{name or 'a replica'} streaming", probe, timeout), time.monotonic()

    def wait_healthy(self, timeout: float = 120) -> tuple[str, str]:
        """One leader, and every other node a replica streaming; returns (leader, replica)."""

        def probe() -> tuple[str, str] | None:
            leader = self.leader()
            if leader is None:
                return None
            others = [n for n in self.nodes if n != leader]
            if all(self.streaming(n) for n in others):
                return leader, others[0]
            return None

        return wait_for("one leader and a streaming replica", probe, timeout)

    def heal(self, timeout: float = 120) -> tuple[str, str]:
        """Undo what an earlier test did to the cluster (a cut link, a killed node), then wait
        for one leader and a streaming replica; returns (leader, replica). Each test starts
        here, so none depends on what ran before it."""
        for node in self.nodes.values():
            self.net.restore(node.host.name)
            if not node.running():
                node.kill9()  # whatever is left of it: a lone postgres, a nebula
                node.start()
        return self.wait_healthy(timeout)

    def write_probe(self, name: str) -> bool:
        """One committed write on `name` from the client's side of the overlay."""
        res = self.psql.run(
            self.nodes[name].target,
            "CREATE TABLE IF NOT EXISTS bkt_probe (at timestamptz NOT NULL);"
            "INSERT INTO bkt_probe VALUES (clock_timestamp())",
            timeout=10,
        )
        return res.returncode == 0

    def switchover(self, leader: str, candidate: str):
        """Ask the leader's REST API for a planned switchover (authenticated, over TLS)."""
        return self.rest.call(
            self.node(leader).address,
            "POST",
            "/switchover",
            {"leader": leader, "candidate": candidate},
            timeout=60,
        )

    def wait_writable(self, name: str, timeout: float) -> float:
        """Wait until `name` commits a write; returns the monotonic time it did."""
        wait_for(f"{name} accepting writes", lambda: self.write_probe(name), timeout, every=0.1)
        return time.monotonic()

    def start_writer(self, table: str, seconds: float = 300) -> Started:
        """The writer client (writer.py) in the DCS namespace, committing into `table`."""
        argv = [
            "ip",
            "netns",
            "exec",
            self.infra.host.netns,
            "/opt/patroni/bin/python",
            str(WRITER),
            "--ca",
            self.ca,
            "--table",
            table,
            "--seconds",
            str(seconds),
        ]
        for node in self.nodes.values():
            argv += ["--host", node.target]
        env = minimal_env(PGPASSWORD=self.psql.password)
        return self.sup.start(f"writer-{len(self.sup.procs)}", argv, env=env)

    def local_sql(self, name: str, sql: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """psql as postgres over the node's own Unix socket: works even when it is cut off."""
        argv = [
            f"{PG_BIN}/psql",
            "--no-psqlrc",
            "-X",
            "-At",
            "-h",
            "/run/postgresql",
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        return self.nodes[name].enter(argv, user="postgres", timeout=timeout, check=False)

    def is_writer(self, name: str) -> bool | None:
        """True: takes writes. False: in recovery, or the server says it serves no one (stopped,
        starting, shutting down). None: any other failure (a timeout, say), no evidence."""
        res = self.local_sql(name, "SELECT pg_is_in_recovery()", timeout=5)
        if res.returncode == 0:
            return {"f": True, "t": False}.get(res.stdout.strip())
        return False if any(s in res.stderr for s in NOT_SERVING) else None

    def watch_writers(
        self, leader: str, replica: str, timeout: float
    ) -> dict[str, list[tuple[float, bool | None]]]:
        """Ask both nodes, each over its own Unix socket (so a cut-off one can still be asked),
        whether they take writes, until the replica does and the leader does not."""
        seen: dict[str, list[tuple[float, bool | None]]] = {leader: [], replica: []}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in (leader, replica):
                seen[name].append((time.monotonic(), self.is_writer(name)))
            if seen[replica][-1][1] is True and seen[leader][-1][1] is False:
                break
            time.sleep(0.1)
        return seen

    def patroni_log(self, name: str) -> str:
        return (self.base / "logs" / f"{name}-patroni.log").read_text(errors="replace")

    # --- tearing down -------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """End every process by PID, delete every namespace; return what is left (nothing)."""
        problems = []
        if self.s3 is not None and self.s3.attached is self.net:
            self.s3.detach()
        # Patroni first and gently, so PostgreSQL is not left writing; then everything by force.
        for node in self.nodes.values():
            proc = node.services.get("patroni")
            if proc is not None and alive(proc.pid, proc.started):
                try:
                    self.sup.stop(proc, signal.SIGTERM, timeout=20)
                except Exception as error:  # noqa: BLE001 - go on with the rest regardless
                    problems.append(f"stopping patroni on {node.name}: {error}")
        still = self.sup.kill_all()
        problems += [f"recorded process {pid} survived SIGKILL" for pid in still]
        # Postgres children and anything else started inside go with the namespaces.
        problems += self.net.delete()
        problems += self.leaks()
        return problems

    def leaks(self) -> list[str]:
        """What of this run still exists: processes, namespaces, links, mounts."""
        found = []
        for p in self.sup.procs:
            if alive(p.pid, p.started):
                found.append(f"process {p.pid} ({p.name}) alive")
        for name in self.net.created:
            if os.path.exists(ns_path(name)):
                found.append(f"namespace {name} exists")
        for name, inode in self.net.inodes.items():
            found += [
                f"process {pid} in namespace {name}"
                for pid in pids_in_netns(inode)
                if self._started_before_deletion(pid)
            ]
        base = str(self.base)
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if base.encode() in cmdline or self.run_id.encode() in cmdline:
                found.append(f"process {pid} refers to the run: {cmdline[:120]!r}")
        mounts = Path("/proc/self/mountinfo").read_text()
        found += [
            f"mount left: {line}"
            for line in mounts.splitlines()
            if base in line or f"/run/netns/{self.run_id}" in line
        ]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
        found += [
            f"link left: {line[:80]}" for line in links.stdout.splitlines() if self.run_id in line
        ]
        return found

    def _started_before_deletion(self, pid: int) -> bool:
        """A process started after the run's namespaces were deleted sits in another
        namespace that got a freed inode number again: not the run's."""
        if self.net.deleted_at is None:
            return True
        started = start_time(pid)
        return started is not None and started <= self.net.deleted_at

    def remove_files(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
