"""Consul's DNS names on a node: `primary.<scope>.service.consul` and
`replica.<scope>.service.consul` (the tags Patroni registers its service with).

The image with Consul carries dnsmasq (dnsmasq-base) and `bakery-consul-dns.service`,
disabled (scripts/consul-dns). When the DCS is Consul and `cluster.dcs.consul.dns_forwarding`
is on, the bundle writes dnsmasq's configuration and a systemd-resolved drop-in that turns
resolved's stub listener off; dnsmasq then answers on the stub's address, 127.0.0.53, which
/etc/resolv.conf already names. `.consul` goes to the local agent's DNS port, every other name
to the uplink servers resolved learned, never to Consul. The runcmd restarts systemd-resolved
once, between enabling and starting the services, so that it lets go of 127.0.0.53.
"""

from __future__ import annotations

from ..config import Settings
from ..errors import BakeryError
from ..templating import render

# The local Consul agent's DNS port (consul.hcl sets it; dnsmasq forwards to it).
CONSUL_DNS_PORT = 8600
DNSMASQ_CONF = "/etc/bakery/consul-dns/dnsmasq.conf"
RESOLVED_DROPIN = "/etc/systemd/resolved.conf.d/bakery-consul-dns.conf"
SERVICE = "bakery-consul-dns.service"
RESOLVED = "systemd-resolved.service"
RESOLVED_DROPIN_TEXT = (
    "# Rendered by bakery: dnsmasq (bakery-consul-dns.service) answers on 127.0.0.53 instead,\n"
    "# sending .consul to the local Consul agent and everything else to the uplink servers.\n"
    "[Resolve]\n"
    "DNSStubListener=no\n"
)


def enabled(settings: Settings) -> bool:
    dcs = settings.cluster.dcs
    return dcs.type == "consul" and dcs.consul is not None and dcs.consul.dns_forwarding


def certificate_names(settings: Settings) -> tuple[str, ...]:
    """The Consul names a member answers to, for its certificate: clients connecting to
    `primary.<scope>.service.consul` can verify the name (`sslmode=verify-full`)."""
    if not enabled(settings):
        return ()
    service = f"{settings.cluster.scope}.service.consul"
    return (service, f"primary.{service}", f"replica.{service}")


def files(env, context) -> list[tuple[str, str, str, str]]:
    """(path, content, owner, mode) of the forwarding's files."""
    conf = render(env, "consul-dns.conf.j2", **context, consul_dns_port=CONSUL_DNS_PORT)
    check_dnsmasq(conf)
    return [
        (DNSMASQ_CONF, conf, "root:root", "0644"),
        (RESOLVED_DROPIN, RESOLVED_DROPIN_TEXT, "root:root", "0644"),
    ]


def check_dnsmasq(text: str) -> None:
    """Parse the rendered file back: `.consul` only to the agent, the agent for nothing else."""
    options = [line.partition("=") for line in text.splitlines() if line and line[0] != "#"]
    servers = [value for key, _, value in options if key.strip() == "server"]
    wanted = f"/consul/127.0.0.1#{CONSUL_DNS_PORT}"
    if servers != [wanted]:
        raise BakeryError(
            f"rendered dnsmasq.conf is wrong: server lines {servers}, expected only {wanted!r} "
            "(check template overrides)"
        )
