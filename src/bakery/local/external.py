"""The external place of a local cluster: the DCS (one etcd member) and the Nebula lighthouse,
on the underlay outside every AZ (`failure_domain: external`), in the run's `ext` namespace.

The lighthouse's certificate is signed with the overlay CA `invoke ca` made and kept in the
state directory (like the nodes'); its configuration is infrastructure, not a node bundle. etcd
listens where the config's DCS member says: the lighthouse's overlay address (the nodes reach it
through Nebula) or the external place's underlay address.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..cleanup import Cleanup
from ..config import Settings
from ..errors import BakeryError
from ..files import write_private
from . import netns

ETCD_PEER_PORT = 2380
TUN = "nebula1"


@dataclass(frozen=True)
class ExternalPlace:
    """Where the DCS and the lighthouse run."""

    address: ipaddress.IPv4Address  # on the underlay
    etcd_address: ipaddress.IPv4Address  # the DCS member's address: etcd's client URL
    etcd_port: int
    lighthouse: ipaddress.IPv4Address | None  # its overlay address; None without an overlay
    listen_port: int | None  # the lighthouse's UDP port on the underlay

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_address}:{self.etcd_port}"


class ExternalError(BakeryError):
    """etcd or the lighthouse did not come up; the message names its log."""


def _start(ns: str, argv: list[str], log: Path, what: str, cleanup: Cleanup) -> subprocess.Popen:
    """Start a daemon inside the namespace, detached, its output in `log`; registered to be
    stopped (its namespace's removal would also end it)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cleanup.push(f"{what} (PID {proc.pid})", lambda: netns.stop_process(proc.pid))
    return proc


def _wait(check, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise ExternalError(f"{what} exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise ExternalError(f"{what} not ready within {timeout:.0f} s; see {log}")
        time.sleep(0.2)


def lighthouse_config(settings: Settings, place: ExternalPlace, cert_dir: Path) -> dict:
    from ..pki import nebula_host

    overlay = settings.overlay
    assert overlay.cidr is not None and overlay.ca_cert is not None and overlay.ca_key is not None
    assert place.lighthouse is not None
    nebula_host(
        cert_dir,
        overlay.ca_cert,
        overlay.ca_key,
        "lighthouse",
        place.lighthouse,
        overlay.cidr.prefixlen,
        ["lighthouse"],
    )
    inbound = [{"port": "any", "proto": "icmp", "host": "any"}]
    if place.etcd_address == place.lighthouse:
        inbound.append({"port": place.etcd_port, "proto": "tcp", "host": "any"})
    return {
        "pki": {
            "ca": str(overlay.ca_cert.resolve()),
            "cert": str((cert_dir / "nebula-host.crt").resolve()),
            "key": str((cert_dir / "nebula-host.key").resolve()),
        },
        "static_host_map": {},
        "lighthouse": {"am_lighthouse": True, "interval": 60},
        "listen": {"host": str(place.address), "port": place.listen_port},
        "punchy": {"punch": True, "respond": True},
        "tun": {"dev": TUN, "mtu": 1300},
        "logging": {"level": "info", "format": "text"},
        # Outbound to anyone (the operator's clients on this place reach the nodes); inbound
        # only what the nodes need of this place.
        "firewall": {
            "outbound": [{"port": "any", "proto": "any", "host": "any"}],
            "inbound": inbound,
        },
    }


def start_lighthouse(
    settings: Settings, ns: str, place: ExternalPlace, run_dir: Path, cleanup: Cleanup
) -> subprocess.Popen:
    config = run_dir / "lighthouse.yml"
    write_private(
        config,
        yaml.safe_dump(lighthouse_config(settings, place, settings.state_dir / "lighthouse")),
    )
    log = run_dir / "lighthouse.log"
    proc = _start(ns, ["nebula", "-config", str(config.resolve())], log, "lighthouse", cleanup)

    def up() -> bool:
        shown = netns.ip("-o", "addr", "show", "dev", TUN, netns=ns) if _has_tun(ns) else ""
        return f" {place.lighthouse}/" in shown

    _wait(up, proc, 30, "the Nebula lighthouse", log)
    return proc


def _has_tun(ns: str) -> bool:
    return f" {TUN}:" in netns.ip("-o", "link", "show", netns=ns)


def start_etcd(ns: str, place: ExternalPlace, run_dir: Path, cleanup: Cleanup) -> subprocess.Popen:
    """One etcd member, as root inside the namespace (its data lives in the private run
    directory, which the etcd user could not enter)."""
    data = run_dir / "etcd"
    data.mkdir(mode=0o700)
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    argv = [
        "etcd",
        "--name", "bakery-local",
        "--data-dir", str(data.resolve()),
        "--listen-client-urls", f"{place.etcd_url},http://127.0.0.1:{place.etcd_port}",
        "--advertise-client-urls", place.etcd_url,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"bakery-local={peer}",
        "--initial-cluster-state", "new",
    ]  # fmt: skip
    log = run_dir / "etcd.log"
    proc = _start(ns, argv, log, "etcd", cleanup)
    _wait(lambda: etcd_healthy(ns, place), proc, 60, "etcd", log)
    return proc


def etcd_healthy(ns: str, place: ExternalPlace) -> bool:
    # No proxy: the URL exists only inside the namespace.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with netns.entered(ns):
            reply = opener.open(f"{place.etcd_url}/health", timeout=2)
        return json.loads(reply.read()).get("health") == "true"
    except (OSError, ValueError):
        return False
