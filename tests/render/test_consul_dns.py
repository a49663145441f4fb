"""Consul DNS names on a node: the forwarding checked in the rendered files, and for real with
dnsmasq as the image's unit runs it, inside a network namespace with stand-in DNS servers (no
Consul binary exists here): `.consul` names are answered by the stand-in on the agent's DNS
port, every other name by the uplink, and the agent never sees them."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bakery.checks import load_hcl
from bakery.node.consul_dns import CONSUL_DNS_PORT, DNSMASQ_CONF, RESOLVED_DROPIN
from tests.helpers import PROJECT
from tests.owned_netns import owned_name, remove

UNIT = PROJECT / "scripts/consul-dns/files/bakery-consul-dns.service"
NODE = Path(__file__).with_name("consul_dns_node.py")


def nodes(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["nodes"]


def consul_variant(rendered) -> tuple[dict, Path]:
    _, config, out = rendered
    if config["cluster"]["dcs"]["type"] != "consul":
        pytest.skip("this variant uses etcd3: no Consul DNS")
    return config, out


def test_forwarding_is_written_and_started_only_with_consul(rendered):
    _, config, out = rendered
    consul = config["cluster"]["dcs"]["type"] == "consul"
    for node in nodes(out):
        paths = {f["path"] for f in node["files"]}
        assert (DNSMASQ_CONF in paths) is consul
        assert (RESOLVED_DROPIN in paths) is consul
        assert ("bakery-consul-dns.service" in node["services"]) is consul
        runcmd = yaml.safe_load((out / node["name"] / "user-data").read_text())["runcmd"]
        restarts = [c for c in runcmd if c[:2] == ["systemctl", "restart"]]
        wanted = [["systemctl", "restart", "systemd-resolved.service"]] if consul else []
        assert restarts == wanted
        if consul:  # resolved lets go of 127.0.0.53 before dnsmasq starts
            assert runcmd.index(restarts[0]) == 1 and runcmd[2][:2] == ["systemctl", "start"]


def test_files_agree_on_the_agent_and_the_stub_address(rendered):
    """Static: Consul's DNS on loopback at the port dnsmasq forwards .consul to, dnsmasq on
    the address /etc/resolv.conf names, resolved's stub listener off."""
    _, out = consul_variant(rendered)
    for node in nodes(out):
        files = out / node["name"] / "files"
        hcl = load_hcl((files / "etc/consul.d/consul.hcl").read_text())
        assert hcl["client_addr"] == "127.0.0.1"
        assert hcl["ports"][0]["dns"] == CONSUL_DNS_PORT
        conf = (files / DNSMASQ_CONF.lstrip("/")).read_text().splitlines()
        assert f"server=/consul/127.0.0.1#{CONSUL_DNS_PORT}" in conf
        assert "listen-address=127.0.0.53" in conf
        assert not [line for line in conf if line.startswith("server=") and "/consul/" not in line]
        dropin = configparser.ConfigParser()
        dropin.read_string((files / RESOLVED_DROPIN.lstrip("/")).read_text())
        assert dict(dropin["Resolve"]) == {"dnsstublistener": "no"}


def test_a_node_resolves_consul_names_through_its_agent_and_nothing_else(rendered):
    config, out = consul_variant(rendered)
    scope = config["cluster"]["scope"]
    node = nodes(out)[0]
    names = [
        f"primary.{scope}.service.consul=198.19.0.11",
        f"replica.{scope}.service.consul=198.19.0.12",
        "db.example.org",
        "www.example.com",
    ]
    namespace = owned_name("r")
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=30)
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True, timeout=30)
        result = subprocess.run(
            [
                *("ip", "netns", "exec", namespace),
                *("unshare", "--mount", "--propagation", "private"),
                *(sys.executable, str(NODE), str(out / node["name"] / "files"), str(UNIT)),
                *names,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        left = remove(namespace)
    assert not left, left
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # ExecStartPre: `dnsmasq --test` accepts the rendered configuration.
    assert [(argv[0], code) for argv, code, _ in report["checks"]] == [("/usr/sbin/dnsmasq", 0)]
    assert "syntax check OK" in report["checks"][0][2]
    assert report["resolved"] == {
        f"primary.{scope}.service.consul": "198.19.0.11",
        f"replica.{scope}.service.consul": "198.19.0.12",
        "db.example.org": "192.0.2.1",
        "www.example.com": "192.0.2.1",
    }
    asked_consul = {entry.split("/")[0] for entry in report["consul_saw"]}
    asked_uplink = {entry.split("/")[0] for entry in report["uplink_saw"]}
    assert asked_consul == {f"primary.{scope}.service.consul", f"replica.{scope}.service.consul"}
    assert asked_uplink == {"db.example.org", "www.example.com"}
    # dnsmasq dropped root after binding port 53.
    assert report["dnsmasq_user"] != "0"
