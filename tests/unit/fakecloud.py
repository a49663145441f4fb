"""A stand-in cloud for the fast logic tests of launch, status, roll, replace and destroy: the
openstacksdk calls bakery makes, on dictionaries, and guests that play a Patroni cluster on
their consoles (BAKERY-NODE lines made by the reporter's own `line()`).

Only for fault injection and logic (the order of a roll, its refusals, its resumption, who is
down when); the cloud tier runs the same code against a real OpenStack and real guests.

The guests' model of Patroni: the first node up leads; a new node streams `boot_seconds`
after its server was created (seen at the next console read); a graceful stop of the leader
hands over to a streaming replica (the synchronous standby, when there is one), as
patroni.service's ExecStop does; a stopped or deleted node is down until its new server
streams. `down_log` records every moment two nodes were down.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from tests.helpers import PROJECT

_spec = importlib.util.spec_from_file_location(
    "bakery_node", PROJECT / "scripts/reporter/files/bakery_node.py"
)
reporter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reporter)

_ids = itertools.count(1)


def new_id(kind: str) -> str:
    return f"{kind}-{next(_ids):04d}"


class Interrupt(KeyboardInterrupt):
    """Raised by the fake where a test injects a Ctrl-C."""


@dataclass
class Guest:
    """One server's node as Patroni would run it."""

    name: str
    role: str = "booting"  # booting -> replica | primary; stopped
    up_at: float = 0.0  # monotonic time when it has joined the cluster
    sync: bool = False
    lines: list[str] = field(default_factory=list)
    seq: int = 0
    build_id: str | None = None

    def say(self, **changes: Any) -> None:
        state = {
            "n": self.name,
            "b": self.build_id,
            "r": None,
            "s": None,
            "tl": 1,
            "rs": None,
            "lag": None,
            "sy": self.sync,
            "pr": False,
            "f": [],
            "e": None,
        }
        if self.role == "primary":
            state.update(r="primary", s="running", lag=0)
        elif self.role == "replica":
            state.update(r="replica", s="running", rs="streaming", lag=0)
        elif self.role == "stopped":
            state.update(e="reporter stopped")
        else:
            state.update(e="api: connection refused")
        state.update(changes)
        self.seq += 1
        self.lines.append(f"[ 1.0] bakery-reporter[1]: {reporter.line(state, self.seq)}")


class Cloud:
    """Every environment's fake connection shares this cluster model."""

    def __init__(self, synchronous: bool = False):
        self.conns: dict[str, FakeConn] = {}
        self.guests: dict[str, Guest] = {}  # server id -> guest
        self.synchronous = synchronous
        self.events: list[str] = []
        self.down_log: list[tuple[str, ...]] = []
        self.interrupt_on: str | None = None  # "create_server <name>", "stop_server <name>", ...
        self.known: set[str] = set()  # the config's node names: one without a server is down
        self.boot_seconds = 0.2  # from create_server to streaming (seen at the next read)

    def conn(self, env: str) -> FakeConn:
        return self.conns.setdefault(env, FakeConn(self, env))

    def all_servers(self) -> list[Any]:
        return [s for c in self.conns.values() for s in c.servers.values()]

    def note(self, event: str) -> None:
        self.events.append(event)
        if event == self.interrupt_on:
            self.interrupt_on = None
            raise Interrupt(event)

    def leader(self) -> Guest | None:
        return next((g for g in self.guests.values() if g.role == "primary"), None)

    def down(self) -> list[str]:
        """Nodes without a server that streams or leads (by name, over the configured ones)."""
        up = {g.name for g in self.guests.values() if g.role in ("primary", "replica")}
        names = {s.name for s in self.all_servers()} | self.known
        return sorted(names - up)

    def check_down(self) -> None:
        down = self.down()
        if len(down) > 1:
            self.down_log.append(tuple(down))

    def elect_sync(self) -> None:
        if not self.synchronous:
            return
        replicas = [g for g in self.guests.values() if g.role == "replica"]
        if replicas and not any(g.sync for g in replicas):
            replicas[0].sync = True
            replicas[0].say()


class Image(SimpleNamespace):
    pass


class FakeConn:
    def __init__(self, cloud: Cloud, env: str):
        self.cloud = cloud
        self.env = env
        self.current_project_id = f"project-{env}"
        self.servers: dict[str, Any] = {}
        self.ports: dict[str, Any] = {}
        self.images: dict[str, Image] = {}
        self.compute = _Compute(self)
        self.network = _Network(self)
        self.image = _Images(self)

    def add_image(self, name: str, build_id: str, status: str = "released", hours_ago: float = 1):
        created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
        image = Image(
            id=new_id("image"),
            name=name,
            created_at=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            min_disk=5,
            min_ram=0,
            owner=self.current_project_id,
            properties={},
            bakery_status=status,
            bakery_build_id=build_id,
            bakery_definition="postgresql14-patroni",
            bakery_inputs_hash="h",
            bakery_base_image_id="base",
            tags=["bakery"],
        )
        self.images[image.id] = image
        return image


class _Compute:
    def __init__(self, conn: FakeConn):
        self.conn = conn

    def servers(self, name: str | None = None, **_):
        found = list(self.conn.servers.values())
        if name is not None:
            found = [s for s in found if re.fullmatch(name.strip("^$").replace("\\", ""), s.name)]
        return found

    def get_server(self, server_id: str):
        import openstack.exceptions

        if server_id not in self.conn.servers:
            raise openstack.exceptions.NotFoundException(f"no server {server_id}")
        return self.conn.servers[server_id]

    def create_server(self, name, image_id, flavor_id, networks, user_data, metadata, tags, **kw):
        cloud = self.conn.cloud
        cloud.note(f"create_server {name}")
        image = self.conn.images[image_id]
        server = SimpleNamespace(
            id=new_id("server"),
            name=name,
            status="ACTIVE",
            image={"id": image_id},
            metadata=dict(metadata),
            created_at=dt.datetime.now(dt.UTC).isoformat(),
            fault=None,
            addresses={},
        )
        port = next(p for p in self.conn.ports.values() if p.id == networks[0]["port"])
        port.device_id = server.id
        self.conn.servers[server.id] = server
        guest = Guest(
            name, up_at=time.monotonic() + cloud.boot_seconds, build_id=image.bakery_build_id
        )
        guest.say()
        cloud.guests[server.id] = guest
        return server

    def get_server_console_output(self, server_id, length=None):
        cloud = self.conn.cloud
        guest = cloud.guests[server_id]
        if guest.role == "booting" and time.monotonic() >= guest.up_at:
            guest.role = "replica" if cloud.leader() else "primary"
            guest.say()
            cloud.elect_sync()
        return {"output": "\n".join(guest.lines[-(length or 1000) :]) + "\n"}

    def stop_server(self, server):
        cloud = self.conn.cloud
        cloud.note(f"stop_server {server.name}")
        guest = cloud.guests[server.id]
        if guest.role == "primary":  # patroni.service's ExecStop: the handover
            fit = [g for g in cloud.guests.values() if g.role == "replica"]
            if cloud.synchronous:
                fit = [g for g in fit if g.sync]
            if fit:
                fit[0].role, fit[0].sync = "primary", False
                fit[0].say(tl=2)
                cloud.events.append(f"handover {guest.name} -> {fit[0].name}")
        guest.role, guest.sync = "stopped", False
        guest.say()
        server.status = "SHUTOFF"
        cloud.check_down()
        cloud.elect_sync()

    def delete_server(self, server, ignore_missing=True):
        cloud = self.conn.cloud
        if isinstance(server, str):  # as openstacksdk: a server or its id
            if server not in self.conn.servers:
                return
            server = self.conn.servers[server]
        cloud.note(f"delete_server {server.name}")
        self.conn.servers.pop(server.id, None)
        guest = cloud.guests.get(server.id)
        if guest is not None:
            guest.role = "stopped"
        for port in self.conn.ports.values():
            if port.device_id == server.id:
                port.device_id = ""
        cloud.check_down()

    def wait_for_delete(self, server, interval=2, wait=300):
        return None

    def find_flavor(self, name, ignore_missing=True):
        return SimpleNamespace(id="flavor", name=name, disk=10, ram=2048)

    def find_keypair(self, name, ignore_missing=True):
        return SimpleNamespace(id=name, name=name)

    def availability_zones(self):
        return [SimpleNamespace(name=z, state={"available": True}) for z in ("az1", "az2")]


class _Network:
    def __init__(self, conn: FakeConn):
        self.conn = conn
        self.addresses = (f"10.{len(conn.env)}.0.{i}" for i in itertools.count(10))

    def ports(self, name: str | None = None, tags: str | None = None, **query):
        found = list(self.conn.ports.values())
        if name is not None:
            found = [p for p in found if p.name == name]
        if tags is not None:
            found = [p for p in found if set(tags.split(",")) <= set(p.tags)]
        if "fixed_ips" in query:
            address = query["fixed_ips"].split("=", 1)[1]
            found = [p for p in found if p.fixed_ips[0]["ip_address"] == address]
        return found

    def create_port(self, name, network_id, fixed_ips, description, **_):
        self.conn.cloud.note(f"create_port {name}")
        address = fixed_ips[0].get("ip_address") or next(self.addresses)
        port = SimpleNamespace(
            id=new_id("port"),
            name=name,
            fixed_ips=[{"ip_address": address, "subnet_id": "subnet"}],
            device_id="",
            tags=[],
        )
        self.conn.ports[port.id] = port
        return port

    def set_tags(self, port, tags):
        port.tags = list(tags)

    def delete_port(self, port, ignore_missing=True):
        if isinstance(port, str):  # as openstacksdk: a port or its id
            if port not in self.conn.ports:
                return
            port = self.conn.ports[port]
        self.conn.cloud.note(f"delete_port {port.name}")
        self.conn.ports.pop(port.id, None)

    def find_network(self, name, ignore_missing=True):
        return SimpleNamespace(id="network", name=name)

    def subnets(self, network_id=None):
        return [
            SimpleNamespace(id="subnet", cidr="10.0.0.0/8", ip_version=4, gateway_ip="10.0.0.1")
        ]

    def find_security_group(self, name, ignore_missing=True):
        return SimpleNamespace(id=f"sg-{name}", name=name)


class _Images:
    def __init__(self, conn: FakeConn):
        self.conn = conn

    def images(self, owner=None, tag=None, **_):
        return list(self.conn.images.values())

    def get_image(self, image_id):
        return self.conn.images[image_id]
