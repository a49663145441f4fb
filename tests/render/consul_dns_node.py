"""A node's name resolution with the Consul DNS forwarding, for real, inside the network and
mount namespaces the caller made (tests/render/test_consul_dns.py runs this with
`ip netns exec NS unshare --mount --propagation private`).

In here: the rendered dnsmasq configuration at its node path, /etc/resolv.conf as the image
has it (systemd-resolved's stub address, 127.0.0.53), two stand-in DNS servers, and dnsmasq
started as bakery-consul-dns.service says (ExecStartPre, then ExecStart):

- "consul": on 127.0.0.1:8600, the local Consul agent's DNS port; answers the names of a
  Patroni service (`primary.<scope>.service.consul`, ...) and records every query it gets;
- "uplink": on 127.0.0.2:53, the cloud's resolver that systemd-resolved would have learned
  (/run/systemd/resolve/resolv.conf names it); answers every name with 192.0.2.1.

Then the C library resolves names the way any program on the node does, and a JSON report
says what each name resolved to and which server saw which query.

usage: consul_dns_node.py FILES_DIR UNIT_FILE NAME...
"""

from __future__ import annotations

import json
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

DNSMASQ_DIR = "/etc/bakery/consul-dns"
UPLINK = ("127.0.0.2", 53)
CONSUL = ("127.0.0.1", 8600)


def parse_question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end of the question) of a DNS query."""
    labels, i = [], 12
    while packet[i]:
        length = packet[i]
        labels.append(packet[i + 1 : i + 1 + length].decode())
        i += 1 + length
    qtype = struct.unpack("!H", packet[i + 1 : i + 3])[0]
    return ".".join(labels).lower(), qtype, i + 5


def answer(query: bytes, address: str | None) -> bytes:
    """A reply to `query`: one A record (TTL 0, as Consul gives), none, or NXDOMAIN."""
    name, qtype, end = parse_question(query)
    flags = 0x8180 if address is not None else 0x8183
    records = b""
    if address is not None and qtype == 1:
        records = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
    header = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if records else 0, 0, 0)
    return header + query[12:end] + records


class StandIn(threading.Thread):
    def __init__(self, where: tuple[str, int], names: dict[str, str] | None, default: str | None):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(where)
        self.names, self.default = names or {}, default
        self.seen: list[str] = []

    def run(self) -> None:
        while True:
            query, peer = self.sock.recvfrom(4096)
            name, qtype, _ = parse_question(query)
            self.seen.append(f"{name}/{qtype}")
            self.sock.sendto(answer(query, self.names.get(name, self.default)), peer)


def unit_commands(unit: Path) -> list[list[str]]:
    """ExecStartPre and ExecStart of the unit, in order (no specifiers or variables used)."""
    commands = []
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStartPre", "ExecStart") and value:
            commands.append(shlex.split(value))
    return commands


def lay_out(files: Path) -> None:
    """The node's paths, in this mount namespace only."""
    for argv in (
        ["mount", "-t", "tmpfs", "tmpfs", "/etc/bakery"],
        ["mkdir", "-p", DNSMASQ_DIR],
        ["cp", str(files / DNSMASQ_DIR.lstrip("/") / "dnsmasq.conf"), DNSMASQ_DIR],
        ["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"],
        ["mkdir", "-p", "/run/systemd/resolve"],
    ):
        subprocess.run(argv, check=True, timeout=30)
    # What systemd-resolved writes: the uplink servers, and the stub file /etc/resolv.conf is.
    Path("/run/systemd/resolve/resolv.conf").write_text(f"nameserver {UPLINK[0]}\n")
    Path("/run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    subprocess.run(
        ["mount", "--bind", "/run/systemd/resolve/stub-resolv.conf", "/etc/resolv.conf"],
        check=True,
        timeout=30,
    )


def resolve(name: str) -> str | None:
    try:
        return socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror:
        return None


def main(files: Path, unit: Path, names: list[str]) -> dict:
    lay_out(files)
    scope_names = {n: a for n, a in (item.split("=") for item in names if "=" in item)}
    consul = StandIn(CONSUL, scope_names, None)
    uplink = StandIn(UPLINK, None, "192.0.2.1")
    consul.start()
    uplink.start()
    *checks, start = unit_commands(unit)
    report: dict = {"checks": []}
    for argv in checks:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        report["checks"].append([argv, res.returncode, res.stdout + res.stderr])
    dnsmasq = subprocess.Popen(start, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while resolve(next(iter(scope_names))) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        report["resolved"] = {
            name.partition("=")[0]: resolve(name.partition("=")[0]) for name in names
        }
        report["dnsmasq_user"] = (
            Path(f"/proc/{dnsmasq.pid}/status").read_text().split("Uid:")[1].split()[0]
        )
    finally:
        dnsmasq.terminate()
        output, _ = dnsmasq.communicate(timeout=10)
    report["consul_saw"] = consul.seen
    report["uplink_saw"] = uplink.seen
    report["dnsmasq_log"] = output
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])))
