"""The local target's network: each AZ a segment of its own behind a router, the routers on a
routed underlay, and the external place (etcd, the Nebula lighthouse) on that underlay.

```
  <run>-ext    under0 198.51.100.1/24 ── az0 ──┐            (bridge: the underlay)
               lighthouse, etcd                └── az1 ──┐
  <run>-az-a   up0 198.51.100.11 ── NAT ── seg0 10.201.0.1/24 ── tap0 (VM local-…-0)
  <run>-az-b   up0 198.51.100.12 ── NAT ── seg0 10.202.0.1/24 ── tap0 (VM local-…-1)
```

Each router masquerades its segment behind its underlay address, as a cloud router with an
external gateway does, and forwards nothing inbound that its nodes did not start. Routers know
only their own segment and the underlay, and the external place forwards nothing, so the AZ
segments have no path to each other: the Nebula overlay carries the cluster (its hole punching
through both NATs is what it does between real clouds). Every address and link lives inside the
run's namespaces; deleting them removes everything, and the host's namespace never sees any.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..cleanup import Cleanup
from . import netns

EXTERNAL = "ext"
UNDERLAY_BRIDGE = "under0"
SEGMENT_BRIDGE = "seg0"
UPLINK = "up0"
# Routers take underlay addresses from here on (the external place has the first host).
FIRST_ROUTER_HOST = 11

# A cloud router: the segment leaves masqueraded; nothing comes in that a node did not start.
ROUTER_RULES = f"""\
table ip bakery_router {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{UPLINK}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{UPLINK}" ct state != {{ established, related }} drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{UPLINK}" ct state != {{ established, related }} drop
  }}
}}
"""


@dataclass(frozen=True)
class Segment:
    """One AZ: a bridge for its nodes' taps behind a router on the underlay."""

    az: str
    index: int  # the AZ's position in the config: its uplink's name and address
    subnet: ipaddress.IPv4Network
    uplink: ipaddress.IPv4Address  # the router on the underlay

    @property
    def role(self) -> str:
        return f"az-{self.az}"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The router on the segment: the subnet's first host, the nodes' default route."""
        return next(self.subnet.hosts())

    @property
    def peer(self) -> str:
        """The uplink's other end, on the external place's underlay bridge."""
        return f"az{self.index}"


@dataclass(frozen=True)
class Network:
    underlay: ipaddress.IPv4Network
    segments: list[Segment]

    @property
    def external(self) -> ipaddress.IPv4Address:
        """The external place on the underlay."""
        return next(self.underlay.hosts())


def router_address(underlay: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    return underlay.network_address + FIRST_ROUTER_HOST + index


def namespace(run: str, role: str) -> str:
    return f"{run}-{role}"


def _add_namespace(name: str, cleanup: Cleanup) -> None:
    # Registered first: a namespace whose creation was cut short is removed too.
    cleanup.push(f"namespace {name} (and what runs in it)", lambda: _removed(name))
    netns.ip("netns", "add", name)
    netns.ip("link", "set", "lo", "up", netns=name)


def _removed(name: str) -> None:
    problems = netns.remove(name)
    if problems:
        raise netns.NetnsError("; ".join(problems))


def create_external(run: str, network: Network, cleanup: Cleanup) -> str:
    """The external place's namespace with the underlay bridge and its address on it."""
    name = namespace(run, EXTERNAL)
    _add_namespace(name, cleanup)
    prefix = network.underlay.prefixlen
    netns.ip("link", "add", UNDERLAY_BRIDGE, "type", "bridge", netns=name)
    netns.ip("addr", "add", f"{network.external}/{prefix}", "dev", UNDERLAY_BRIDGE, netns=name)
    netns.ip("link", "set", UNDERLAY_BRIDGE, "up", netns=name)
    return name


def create_segment(run: str, network: Network, segment: Segment, cleanup: Cleanup) -> str:
    """An AZ's namespace: its segment's bridge (the gateway address), and the router's uplink
    to the underlay with forwarding and NAT."""
    name = namespace(run, segment.role)
    external = namespace(run, EXTERNAL)
    _add_namespace(name, cleanup)
    netns.ip("link", "add", SEGMENT_BRIDGE, "type", "bridge", netns=name)
    gateway = f"{segment.gateway}/{segment.subnet.prefixlen}"
    netns.ip("addr", "add", gateway, "dev", SEGMENT_BRIDGE, netns=name)
    netns.ip("link", "set", SEGMENT_BRIDGE, "up", netns=name)
    # Both ends of the uplink are made inside namespaces: the host never sees them.
    netns.ip("link", "add", UPLINK, "type", "veth", "peer", "name", segment.peer,
             "netns", external, netns=name)  # fmt: skip
    uplink = f"{segment.uplink}/{network.underlay.prefixlen}"
    netns.ip("addr", "add", uplink, "dev", UPLINK, netns=name)
    netns.ip("link", "set", UPLINK, "up", netns=name)
    netns.ip("link", "set", segment.peer, "master", UNDERLAY_BRIDGE, "up", netns=external)
    netns.run_in(name, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    netns.run_in(name, ["nft", "-f", "-"], stdin=ROUTER_RULES)
    return name


def add_tap(run: str, segment: Segment, tap: str) -> None:
    """A VM's NIC: a tap on its AZ's segment bridge (it goes with the namespace)."""
    name = namespace(run, segment.role)
    netns.ip("tuntap", "add", "dev", tap, "mode", "tap", netns=name)
    netns.ip("link", "set", tap, "master", SEGMENT_BRIDGE, "up", netns=name)
