"""The test cloud's wires: each environment's Neutron network is a bridge of its own, each
environment has a router to a routed "public" segment, and that segment is the only path between
the two environments (as between pluscloud open's two clouds, which meet on the internet).

```
 <p>-sw1  br0: env1's network 192.0.2.0/24     <p>-sw2  br0: env2's network 198.51.100.0/24
     │ guests' eth0 (tests/cloud/guest.py)         │ guests' eth0
     │ lan0 192.0.2.1                              │ lan0 198.51.100.1
 <p>-r1  router (forwards)                     <p>-r2  router (forwards)
     │ pub0 203.0.113.2 ── cable up1               │ pub0 203.0.113.3 ── cable up2
     └──────────────── <p>-pub  br0: 203.0.113.0/24 (TEST-NET-3) ──────┘
                         hosts of a test run plug in here (tests/cloud/outside.py)
```

No NAT: each router routes to the other environment's network through the other router, so
Nebula's underlay path between two nodes is routed, and unplugging one router's cable
(`cut`) leaves that environment alone. Every address exists only inside these namespaces.

Run by the stack as its process `bakery-net` (`python -m tests.cloud.underlay --state DIR`),
the owner of the namespaces (`bkn-<its pid>-<6 hex>-…`, tests/owned_netns.py): it builds them
from `net/spec.json`, says what it built in `net/net.json`, and deletes them on SIGTERM; a
sweep removes them after a SIGKILL.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from netns import cable

from tests.owned_netns import owned_name, remove

from .layout import Layout

PUBLIC_CIDR = "203.0.113.0/24"  # TEST-NET-3: the "internet" between the environments
PUBLIC_FIRST_ROUTER = 2  # env i's router is .(1 + i) on the public segment


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


def spec_from(info: dict) -> dict:
    """What to build, from provisioned.json: each environment's network, its CIDR and
    gateway (Neutron's default: the first address)."""
    from .provision import ENVIRONMENTS

    envs = {}
    for cloud, env in info["environments"].items():
        cidr = env.get("cidr") or ENVIRONMENTS[cloud]["cidr"]
        gateway = env.get("gateway") or str(next(ipaddress.ip_network(cidr).hosts()))
        envs[cloud] = {"network_id": env["network_id"], "cidr": cidr, "gateway": gateway}
    return {"public": PUBLIC_CIDR, "environments": envs}


def net_json(layout: Layout) -> Path:
    return layout.root / "net" / "net.json"


def load(layout: Layout) -> dict:
    """What `bakery-net` built (net/net.json)."""
    return json.loads(net_json(layout).read_text())


def wait_ready(layout: Layout, owner: int, timeout: float = 60) -> dict:
    """Until the process `owner` has written net.json."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            built = load(layout)
            if built["owner"] == owner:
                return built
        except (OSError, ValueError, KeyError):
            pass
        if not os.path.exists(f"/proc/{owner}"):
            raise RuntimeError(f"bakery-net ({owner}) exited: see {layout.logs}/bakery-net.log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"bakery-net did not build the networks in {timeout} s")
        time.sleep(0.1)


def cut(layout: Layout, cloud: str) -> None:
    """Unplug the environment's router from the public segment: its nodes reach nothing
    outside their own network."""
    _uplink(layout, cloud, "down")


def restore(layout: Layout, cloud: str) -> None:
    _uplink(layout, cloud, "up")


def _uplink(layout: Layout, cloud: str, state: str) -> None:
    built = load(layout)
    switch, uplink = built["public"]["switch"], built["environments"][cloud]["uplink"]
    run("ip", "-n", switch, "link", "set", uplink, state)


class Underlay:
    def __init__(self, spec: dict):
        self.spec = spec
        self.prefix = owned_name("n")
        self.created: list[str] = []  # namespaces asked for, removed in reverse

    def _ns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.created.append(name)
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _switch(self, suffix: str) -> str:
        name = self._ns(suffix)
        run("ip", "-n", name, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", name, "link", "set", "br0", "up")
        return name

    def build(self) -> dict:
        public = ipaddress.ip_network(self.spec["public"])
        pub = self._switch("pub")
        built = {"owner": os.getpid(), "public": {"switch": pub, "cidr": str(public)}}
        envs, networks = {}, {}
        for i, (cloud, env) in enumerate(self.spec["environments"].items(), 1):
            switch, router = self._switch(f"sw{i}"), self._ns(f"r{i}")
            lan = ipaddress.ip_network(env["cidr"])
            cable(switch, "gw", router, "lan0", f"{env['gateway']}/{lan.prefixlen}")
            uplink = public.network_address + PUBLIC_FIRST_ROUTER + i - 1
            cable(pub, f"up{i}", router, "pub0", f"{uplink}/{public.prefixlen}")
            run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            envs[cloud] = {
                "switch": switch,
                "router": router,
                "uplink": f"up{i}",
                "public_address": str(uplink),
                "cidr": env["cidr"],
                "gateway": env["gateway"],
                "network_id": env["network_id"],
            }
            networks[env["network_id"]] = {"switch": switch, "environment": cloud}
        for cloud, env in envs.items():
            for other, theirs in envs.items():
                if other != cloud:
                    run(
                        "ip",
                        "-n",
                        env["router"],
                        "route",
                        "add",
                        theirs["cidr"],
                        "via",
                        theirs["public_address"],
                    )
        return built | {"environments": envs, "networks": networks}

    def delete(self) -> list[str]:
        problems = []
        for name in reversed(self.created):
            problems += remove(name)
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the test cloud's networks (bakery-net)")
    parser.add_argument("--state", required=True, help="the stack's state directory")
    args = parser.parse_args(argv)
    layout = Layout(Path(args.state))
    spec = json.loads((layout.root / "net" / "spec.json").read_text())
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    underlay = Underlay(spec)
    try:
        built = underlay.build()
        tmp = net_json(layout).with_suffix(".tmp")
        tmp.write_text(json.dumps(built, indent=2))
        tmp.rename(net_json(layout))
        print(f"bakery-net: built {', '.join(underlay.created)}", flush=True)
        while not stopping:
            time.sleep(0.5)
    finally:
        net_json(layout).unlink(missing_ok=True)
        problems = underlay.delete()
        print(f"bakery-net: removed its namespaces; problems: {problems}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
