"""What the cluster leans on, in the DCS namespace: the etcd member (standing in for Consul
through the `cluster.dcs.type` switch) and the Nebula lighthouse beside it.

The lighthouse's certificate is signed with the overlay CA that `invoke ca` created; its
config is the harness's own (a lighthouse is infrastructure, not part of a node bundle).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from netns import Host, entered
from processes import Started, Supervisor, minimal_env

ETCD_PORT = 2379


@dataclass
class Infra:
    host: Host
    base: Path
    sup: Supervisor
    overlay_address: str  # the lighthouse's, where etcd listens too
    overlay_prefix: int
    listen_port: int
    nebula_ca: tuple[Path, Path]  # (ca.crt, ca.key)
    lighthouse: Started | None = None
    etcd: Started | None = None

    def nsexec(self) -> list[str]:
        return ["ip", "netns", "exec", self.host.netns]

    def start(self) -> None:
        self.start_lighthouse()
        self.start_etcd()

    def start_lighthouse(self) -> None:
        d = self.base / "lighthouse"
        address = f"{self.overlay_address}/{self.overlay_prefix}"
        config = nebula_host(d, self.nebula_ca, "lighthouse", address, self.listen_port)
        config["lighthouse"] = {"am_lighthouse": True, "interval": 60}
        # It also carries the test client's traffic: all outbound, replies come back.
        config["firewall"]["inbound"].append({"port": ETCD_PORT, "proto": "tcp", "host": "any"})
        (d / "config.yml").write_text(yaml.safe_dump(config))
        argv = self.nsexec() + ["nebula", "-config", str(d / "config.yml")]
        self.lighthouse = self.sup.start("lighthouse", argv)
        wait_address(self.host.netns, self.overlay_address, "lighthouse")

    def start_etcd(self) -> None:
        data = self.base / "etcd"
        client = f"http://{self.overlay_address}:{ETCD_PORT}"
        peer = "http://127.0.0.1:2380"
        argv = self.nsexec() + etcd_command(
            "dcs", data, [client, f"http://127.0.0.1:{ETCD_PORT}"], client, peer, f"dcs={peer}"
        )
        self.etcd = self.sup.start("etcd", argv, env=minimal_env(HOME=str(data)))
        deadline = time.monotonic() + 20
        while not self.etcd_healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy after 20 s; see {self.etcd.log}")
            time.sleep(0.1)

    def etcd_healthy(self) -> bool:
        return etcd_healthy(self.host.netns, self.overlay_address)


def etcd_healthy(netns: str, address: str) -> bool:
    """An etcd member at `address` says it is healthy (asked from inside `netns`)."""
    try:
        with entered(netns):
            resp = urllib.request.urlopen(  # noqa: S310 - fixed http URL in our namespace
                f"http://{address}:{ETCD_PORT}/health", timeout=2
            )
        return json.loads(resp.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def etcd_command(
    name: str, data: Path, listen: list[str], client: str, peer: str, cluster: str
) -> list[str]:
    """etcd as the etcd user: one member of the initial `cluster` ("n1=url,n2=url")."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    etcd_user = pwd.getpwnam("etcd")
    os.chown(data, etcd_user.pw_uid, etcd_user.pw_gid)
    return [
        "setpriv",
        "--reuid=etcd",
        "--regid=etcd",
        "--init-groups",
        "--",
        "etcd",
        "--name",
        name,
        "--data-dir",
        str(data),
        "--listen-client-urls",
        ",".join(listen),
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        cluster,
        "--initial-cluster-state",
        "new",
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]


def nebula_host(d: Path, ca: tuple[Path, Path], name: str, address: str, listen_port: int) -> dict:
    """A host certificate signed with the overlay CA in `d`, and the config of a host that
    only answers ICMP (callers add their own inbound rules and lighthouse settings)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = ca
    subprocess.run(
        [
            "nebula-cert",
            "sign",
            "-ca-crt",
            str(ca_crt),
            "-ca-key",
            str(ca_key),
            "-name",
            name,
            "-ip",
            address,
            "-groups",
            name,
            "-out-crt",
            str(d / "host.crt"),
            "-out-key",
            str(d / "host.key"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return {
        "pki": {"ca": str(ca_crt), "cert": str(d / "host.crt"), "key": str(d / "host.key")},
        "static_host_map": {},
        "listen": {"host": "0.0.0.0", "port": listen_port},
        "punchy": {"punch": True, "respond": True},
        "tun": {"dev": "nebula1", "mtu": 1300},
        "logging": {"level": "info", "format": "text"},
        "firewall": {
            "outbound": [{"port": "any", "proto": "any", "host": "any"}],
            "inbound": [{"port": "any", "proto": "icmp", "host": "any"}],
        },
    }


def wait_address(netns: str, address: str, what: str, timeout: float = 15) -> None:
    """Until `address` is on nebula1 in `netns` (Nebula is up)."""
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(
            ["ip", "-n", netns, "-o", "addr", "show", "dev", "nebula1"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if f" {address}/" in res.stdout:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no {address} on nebula1 after {timeout:.0f} s")
        time.sleep(0.05)
