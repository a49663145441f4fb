"""A cluster launched into the test cloud, seen and driven from outside both environments.

Outside is the stack's public segment (tests/cloud/underlay.py), where the seed has its Consul
servers and its Nebula lighthouse: here, in namespaces of the test run, a lighthouse and three
etcd members (the DCS, `failure_domain: external`, each reached at its overlay address); the
tests' clients (REST API, psql, the writer) sit in the lighthouse's namespace and reach the
nodes over the overlay. `LaunchedCluster` is the cluster tier's Cluster (harness.py) with these
pieces in place of its own network and nodes, so its waits, observations and teardown are the
same code; its nodes are views of the guests (their disks, their namespaces), which Nova runs.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import ascii_lowercase
from typing import Any

import yaml
from bundle import NodeBundle, settings_of
from harness import Cluster, wait_for
from infra import ETCD_PORT, Infra, etcd_command, etcd_healthy, nebula_host, wait_address
from netns import Host, Network, entered
from nodes import Node
from processes import Supervisor, minimal_env

from . import guest, underlay
from .layout import Layout

# The address plan outside: (overlay, public). The overlay range and the etcd members' overlay
# addresses are tests/helpers.base_config's; the public ones sit on TEST-NET-3.
LIGHTHOUSE = ("100.102.0.1", "203.0.113.10")
ETCD_MEMBERS = [
    ("100.102.1.30", "203.0.113.11"),
    ("100.102.1.31", "203.0.113.12"),
    ("100.102.1.32", "203.0.113.13"),
]
NEBULA_PORT = 4242
_OUTSIDES = itertools.count()  # clusters of this process
ETCD_PEER_PORT = 2380


@dataclass
class Attached:
    """A process the test did not start (a guest's namespace holder), by PID."""

    pid: int
    started: int | None


@dataclass
class LaunchedCluster(Cluster):
    layout: Layout = field(default_factory=Layout.default)
    config: Path | None = None
    servers: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (conn, id)
    environments: dict[str, str] = field(default_factory=dict)  # name -> stack cloud name

    def __post_init__(self) -> None:
        # The Cluster's own, but under the stack's state and on the stack's public segment.
        self.base = self.layout.root / "outside" / self.run_id
        (self.base / "logs").mkdir(parents=True)
        self.sup = Supervisor(self.base / "logs")
        self.wires = underlay.load(self.layout)
        self.net = Network(
            self.run_id,
            shared_switch=self.wires["public"]["switch"],
            # The owner's PID and a letter per cluster: an earlier module's cables may still
            # be on the shared switch while the kernel removes its namespaces.
            veth_prefix=f"o{os.getpid()}{ascii_lowercase[next(_OUTSIDES) % 26]}-",
        )

    # --- outside --------------------------------------------------------------------------------
    def start_outside(self) -> None:
        """Lighthouse and three etcd members, each routed to both environments."""
        self.settings = settings_of(self.config)
        overlay = self.settings["overlay"]
        prefix = int(overlay["cidr"].split("/")[1])
        ca = (Path(overlay["ca_cert"]), Path(overlay["ca_key"]))
        lighthouse = overlay["lighthouses"][0]
        if lighthouse["overlay_address"] != LIGHTHOUSE[0]:
            raise ValueError(f"{self.config}: the lighthouse is not at {LIGHTHOUSE[0]}")
        lh = self._host("lh", LIGHTHOUSE[1])
        self.infra = Infra(lh, self.base / "lh", self.sup, LIGHTHOUSE[0], prefix, NEBULA_PORT, ca)
        self.infra.start_lighthouse()
        members = [m["address"] for m in self.settings["cluster"]["dcs"]["members"]]
        if members != [overlay_address for overlay_address, _ in ETCD_MEMBERS]:
            raise ValueError(f"{self.config}: the DCS members are not {ETCD_MEMBERS}")
        initial = ",".join(
            f"dcs{i}=http://{address}:{ETCD_PEER_PORT}"
            for i, (address, _) in enumerate(ETCD_MEMBERS, 1)
        )
        for i, (address, public) in enumerate(ETCD_MEMBERS, 1):
            host = self._host(f"dcs{i}", public)
            config = nebula_host(
                self.base / host.name, ca, host.name, f"{address}/{prefix}", NEBULA_PORT
            )
            config["static_host_map"] = {LIGHTHOUSE[0]: [lighthouse["public_address"]]}
            config["lighthouse"] = {
                "am_lighthouse": False,
                "interval": 60,
                "hosts": [LIGHTHOUSE[0]],
            }
            for port in (ETCD_PORT, ETCD_PEER_PORT):
                config["firewall"]["inbound"].append({"port": port, "proto": "tcp", "host": "any"})
            path = self.base / host.name / "config.yml"
            path.write_text(yaml.safe_dump(config))
            self.sup.start(f"{host.name}-nebula", self._in(host, ["nebula", "-config", str(path)]))
            wait_address(host.netns, address, host.name)
        for i, (address, _) in enumerate(ETCD_MEMBERS, 1):
            host, data = self.net.hosts[f"dcs{i}"], self.base / f"dcs{i}" / "etcd"
            client = f"http://{address}:{ETCD_PORT}"
            listen = [client, f"http://127.0.0.1:{ETCD_PORT}"]
            peer = f"http://{address}:{ETCD_PEER_PORT}"
            argv = etcd_command(f"dcs{i}", data, listen, client, peer, initial)
            # Raft heartbeats over the overlay on two busy cores: slower than etcd's defaults.
            argv += ["--heartbeat-interval", "250", "--election-timeout", "2500"]
            self.sup.start(f"etcd{i}", self._in(host, argv), env=minimal_env(HOME=str(data)))
        wait_for(
            "three healthy etcd members, asked over the overlay",
            lambda: all(etcd_healthy(lh.netns, a) for a, _ in ETCD_MEMBERS),
            90,
            every=0.5,
        )

    def _host(self, name: str, public: str) -> Host:
        host = self.net.add_host(name, public)
        for env in self.wires["environments"].values():
            self.net.route(name, env["cidr"], env["public_address"])
        return host

    @staticmethod
    def _in(host: Host, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host.netns, *argv]

    def clear_dcs(self) -> None:
        """Delete the cluster's keys (`/<namespace>/<scope>/`): a new cluster of the same
        scope bootstraps instead of finding the last one's `initialize` key."""
        cluster = self.settings["cluster"]
        prefix = f"/{cluster['namespace']}/{cluster['scope']}/".encode()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        body = {
            "key": base64.b64encode(prefix).decode(),
            "range_end": base64.b64encode(end).decode(),
        }
        request = urllib.request.Request(
            f"http://{ETCD_MEMBERS[0][0]}:{ETCD_PORT}/v3/kv/deleterange",
            data=json.dumps(body).encode(),
            method="POST",
        )
        with entered(self.infra.host.netns):
            urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - our etcd

    # --- the guests -----------------------------------------------------------------------------
    def attach(self, conns: dict[str, Any], admin) -> None:
        """Find the cluster's servers in the stack's projects and look at their guests."""
        self.servers.clear()
        for cloud, conn in conns.items():
            scope = self.settings["cluster"]["scope"]
            for server in conn.compute.servers():
                if (server.metadata or {}).get("bakery_cluster") == scope:
                    self.servers[server.name] = (conn, server.id)
                    self.environments[server.name] = cloud
        self.admin = admin
        self.refresh()
        self.connect_clients(self.infra.host.netns)

    def connect_clients(self, netns: str) -> None:
        """As the cluster tier's, but with the operator's own copies of the CA and the client
        certificate: a guest's disk goes with its server."""
        super().connect_clients(netns)
        kept = self.base / "client"
        kept.mkdir(mode=0o700, exist_ok=True)
        ca, cert, key = (shutil.copy(path, kept) for path in (self.ca, *self.rest.client_cert))
        self.ca = self.rest.cafile = self.psql.cafile = ca
        self.rest.client_cert = (cert, key)

    def refresh(self, timeout: float = 120) -> None:
        """A view of each running guest (its namespaces change at every boot)."""
        self.nodes.clear()
        for name in self.servers:
            view = wait_for(f"guest {name} booted", lambda n=name: self._view(n), timeout)
            self.nodes[name] = view

    def disk(self, name: str) -> Path:
        _, server_id = self.servers[name]
        host = self.admin.compute.get_server(server_id).compute_host
        return self.layout.data / "nova" / host / "instances" / server_id

    def _view(self, name: str) -> Node | None:
        disk = self.disk(name)
        spec, state = guest.read(disk, guest.GUEST), guest.read(disk, guest.RUN)
        patroni = disk / "root" / "etc" / "patroni" / "patroni.yml"
        if not (spec and state and "holder" in state and patroni.exists()):
            return None
        overlay = yaml.safe_load(patroni.read_text())["restapi"]["connect_address"]
        underlay = spec["network"]["address"]
        bundle = NodeBundle(name, spec["host"], underlay, overlay.rsplit(":", 1)[0], {}, None)
        host = Host(name, spec["netns"], underlay, spec["veth"])
        holder = Attached(state["holder"], state["holder_started"])
        return Node(bundle, host, disk / "root", self.sup, holder=holder)

    def server(self, name: str):
        conn, server_id = self.servers[name]
        return conn.compute.get_server(server_id)

    def stop_server(self, name: str, timeout: float = 180) -> None:
        conn, server_id = self.servers[name]
        conn.compute.stop_server(server_id)
        conn.compute.wait_for_server(self.server(name), status="SHUTOFF", interval=1, wait=timeout)

    def start_server(self, name: str, timeout: float = 120) -> None:
        conn, server_id = self.servers[name]
        conn.compute.start_server(server_id)
        self.wait_for_server(name, timeout)

    def wait_for_server(self, name: str, timeout: float = 120) -> None:
        """Until the server is ACTIVE with no task, and its guest has booted."""
        wait_for(
            f"server {name} ACTIVE",
            lambda: (s := self.server(name)).status == "ACTIVE" and not s.task_state,
            timeout,
            every=1,
        )
        self.nodes[name] = wait_for(f"guest {name} booted", lambda: self._view(name), timeout)

    def logged_at(self, name: str, unit: str, text: str, after: float) -> float:
        """When the guest's unit first logged a line holding `text` at or after `after` (epoch
        seconds, from the line's own `YYYY-MM-DD HH:MM:SS,mmm`, the machine's local time)."""
        for line in guest.journal(self.disk(name), unit).splitlines():
            if text in line:
                at = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at >= after:
                    return at
        raise AssertionError(f"{name}'s {unit} never logged {text!r}")

    def journal_lines(self, name: str, unit: str, text: str) -> int:
        """How many lines of the guest's journal of `unit` (guest.journal) hold `text`."""
        return sum(text in line for line in guest.journal(self.disk(name), unit).splitlines())

    def keep_guest_files(self) -> None:
        """Copy each guest's console and journals next to the outside's files (a failed test
        wants them; deleting the servers removes their disks)."""
        for name in self.servers:
            with contextlib.suppress(Exception):  # a server may be gone, a disk half written
                disk, kept = self.disk(name), self.base / "guests" / name
                shutil.copytree(disk / "journal", kept / "journal")
                for file in ("console.log", guest.GUEST, "state.json"):
                    shutil.copy(disk / file, kept / file)

    def console(self, name: str) -> str:
        conn, server_id = self.servers[name]
        return conn.compute.get_server_console_output(server_id)["output"]

    # --- healing ---------------------------------------------------------------------------------
    def heal(self, timeout: float = 180) -> tuple[str, str]:
        """Undo what an earlier test did: underlay cables plugged in again, stopped servers
        started; then one leader and a streaming replica. A deleted server cannot come back:
        the test that deletes one runs last."""
        for cloud in self.wires["environments"]:
            underlay.restore(self.layout, cloud)
        for name in self.servers:
            status = self.server(name).status
            if status == "SHUTOFF":
                self.start_server(name)
            elif status != "ACTIVE":
                raise AssertionError(f"server {name} is {status}: the cluster cannot heal")
        return self.wait_healthy(timeout)

    def patroni_log(self, name: str) -> str:
        return guest.journal(self.disk(name), "patroni")
