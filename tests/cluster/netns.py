"""Network namespaces, one per host, joined by a bridge that lives in a namespace of its own.

Nothing is created in the host's namespace: the bridge and every veth end sit inside the run's
namespaces, so the test addresses exist only there and deleting the namespaces removes all links.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from processes import boot_ticks

from bakery.local.netns import entered  # noqa: F401 - the tiers import it from here
from tests.owned_netns import ns_inode, ns_path, remove


def run(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=check, stdin=subprocess.DEVNULL
    )


def cable(switch: str, port: str, host: str, dev: str, address: str, mac: str = "") -> None:
    """A veth from the bridge `br0` of namespace `switch` (that end named `port`) to `dev` in
    namespace `host`, up, with `address` (CIDR form) and `mac` if given. Both ends are made
    inside namespaces: the machine's own namespace never sees them."""
    run("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", host)
    run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
    if mac:
        run("ip", "-n", host, "link", "set", dev, "address", mac)
    run("ip", "-n", host, "addr", "add", address, "dev", dev)
    run("ip", "-n", host, "link", "set", dev, "up")


@dataclass
class Host:
    name: str  # short role name: dcs, or the node name
    netns: str
    underlay: str  # address on the bridge, without prefix length
    veth: str  # the bridge-side end, inside the switch namespace


@dataclass
class Network:
    """A switch namespace with a bridge, and one namespace per host plugged into it."""

    run_id: str
    prefix_len: int = 24
    hosts: dict[str, Host] = field(default_factory=dict)
    # Every namespace asked for, recorded before `ip netns add`: one whose creation was cut
    # short (an error, an interrupt) is deleted too.
    created: list[str] = field(default_factory=list)
    inodes: dict[str, int] = field(default_factory=dict)
    # Someone else's switch namespace to plug the hosts into (the cloud stack's public segment)
    # instead of one of the run's own; `veth_prefix` keeps the run's cables apart on it.
    shared_switch: str | None = None
    veth_prefix: str = "v"
    # When delete() was done: the kernel hands a deleted namespace's inode number to new
    # namespaces (other test runs' too), whose processes all start later.
    deleted_at: int | None = None

    @property
    def switch(self) -> str:
        return self.shared_switch or f"{self.run_id}-sw"

    def _add_ns(self, name: str) -> None:
        self.created.append(name)
        run("ip", "netns", "add", name)
        self.inodes[name] = ns_inode(ns_path(name))
        run("ip", "-n", name, "link", "set", "lo", "up")

    def create_switch(self) -> None:
        self._add_ns(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str, underlay: str) -> Host:
        host = Host(name, f"{self.run_id}-{name}", underlay, f"{self.veth_prefix}{len(self.hosts)}")
        self._add_ns(host.netns)
        self.plug(host.netns, host.veth, underlay)
        self.hosts[name] = host
        return host

    def plug(self, netns: str, veth: str, underlay: str) -> None:
        """Connect namespace `netns` to the bridge as `eth0` with the address `underlay`."""
        cable(self.switch, veth, netns, "eth0", f"{underlay}/{self.prefix_len}")

    def route(self, name: str, cidr: str, via: str) -> None:
        """A route from host `name` to `cidr` through a router on its segment."""
        run("ip", "-n", self.hosts[name].netns, "route", "add", cidr, "via", via)

    def cut(self, name: str) -> None:
        """Unplug a host: its underlay link goes down, so every tunnel through it stops."""
        run("ip", "-n", self.hosts[name].netns, "link", "set", "eth0", "down")

    def restore(self, name: str) -> None:
        run("ip", "-n", self.hosts[name].netns, "link", "set", "eth0", "up")

    def delete(self) -> list[str]:
        """Kill what still runs in each namespace of the run, delete them all (the veths and the
        bridge go with them); returns the errors instead of stopping at one."""
        errors = []
        for name in reversed(self.created):
            errors += remove(name)
        self.deleted_at = boot_ticks()
        return errors
