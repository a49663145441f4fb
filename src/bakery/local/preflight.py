"""What a local cluster needs, checked before anything is made: the config fits (etcd3 with one
member in the external place, one lighthouse there, a subnet of its own per AZ, the overlay
when several AZs), this machine can run it (root, tools, free memory), and the image exists and
carries the PostgreSQL the config names. Every problem is reported, with its field path where
the config can fix it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

from ..config import Settings
from ..errors import BakeryError, ConfigError, Problem
from ..image.localbuild import BuildResult, load_result
from . import network

# What QEMU (TCG's translation cache) and the host's share of a VM take beyond its memory.
VM_OVERHEAD_MB = 400
# etcd, Nebula, the keeper and the tool itself.
BASE_NEED_MB = 300
# Tool -> the Debian package that brings it (dev/install-local-tools installs them all).
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "cloud-localds": "cloud-image-utils",
    "ip": "iproute2",
    "nft": "nftables",
    "sysctl": "procps",
    "etcd": "etcd-server",
}
OVERLAY_TOOLS = {"nebula": "nebula", "nebula-cert": "nebula"}


def config_problems(settings: Settings, labels: list[str]) -> list[str]:
    """What in the config a local cluster cannot run, with the field to change."""
    problems: list[Problem] = []
    dcs = settings.cluster.dcs
    overlay = settings.overlay
    underlay = settings.local.underlay
    external = next(underlay.hosts())
    if dcs.type != "etcd3":
        problems.append(
            Problem(
                "bakery.cluster.dcs.type",
                f"{dcs.type!r}: the local target runs the DCS itself, and only etcd runs on "
                "this machine; use 'etcd3'",
            )
        )
    elif dcs.etcd3 is not None and dcs.etcd3.protocol != "http":
        problems.append(
            Problem(
                "bakery.cluster.dcs.etcd3.protocol",
                f"{dcs.etcd3.protocol!r}: the local target's etcd serves 'http' (on the overlay, "
                "Nebula encrypts it)",
            )
        )
    lighthouse = overlay.lighthouses[0].overlay_address if overlay.lighthouses else None
    allowed_dcs = [str(a) for a in (lighthouse, external) if a is not None]
    if len(dcs.members) != 1 or dcs.members[0].failure_domain != "external":
        problems.append(
            Problem(
                "bakery.cluster.dcs.members",
                f"{len(dcs.members)} member(s); the local target runs one etcd member in the "
                f"external place: give one, failure_domain 'external', at "
                f"{' or '.join(allowed_dcs)}",
            )
        )
    elif dcs.members[0].address not in allowed_dcs:
        problems.append(
            Problem(
                "bakery.cluster.dcs.members.0.address",
                f"{dcs.members[0].address!r}: etcd runs in the external place, at "
                f"{' or '.join(allowed_dcs)}",
            )
        )
    if overlay.type == "nebula":
        if len(overlay.lighthouses) != 1:
            problems.append(
                Problem(
                    "bakery.overlay.lighthouses",
                    f"{len(overlay.lighthouses)} lighthouses; the local target runs one, in "
                    "the external place",
                )
            )
        wanted = f"{external}:{overlay.listen_port}"
        for i, lh in enumerate(overlay.lighthouses[:1]):
            if lh.public_address != wanted:
                problems.append(
                    Problem(
                        f"bakery.overlay.lighthouses.{i}.public_address",
                        f"{lh.public_address!r}: the local lighthouse listens on the external "
                        f"place's underlay address and overlay.listen_port: use '{wanted}'",
                    )
                )
        if overlay.cidr is not None and overlay.cidr.overlaps(underlay):
            problems.append(
                Problem(
                    "bakery.local.underlay",
                    f"{underlay} overlaps overlay.cidr {overlay.cidr}",
                )
            )
    elif len(labels) > 1:
        problems.append(
            Problem(
                "bakery.overlay.type",
                "'none', but the AZ segments have no path to each other (only to the "
                "underlay, through their routers' NAT): nodes in several AZs need the Nebula "
                "overlay",
            )
        )
    last_router = network.router_address(underlay, len(settings.azs) - 1)
    if last_router not in underlay or last_router == underlay.broadcast_address:
        problems.append(
            Problem(
                "bakery.local.underlay",
                f"{underlay} is too small: the routers of {len(settings.azs)} AZ(s) take hosts "
                f".{network.FIRST_ROUTER_HOST} onwards",
            )
        )
    subnets: dict[str, ipaddress.IPv4Network] = {}
    for label in labels:
        az = settings.azs[label]
        where = f"bakery.azs.{label}"
        if az.subnet is None:
            problems.append(
                Problem(
                    f"{where}.subnet",
                    "required for the local target: the AZ's segment (its first host is the "
                    "router)",
                )
            )
            continue
        others = [(f"bakery.azs.{k}.subnet", v) for k, v in subnets.items()]
        others.append(("bakery.local.underlay", underlay))
        if overlay.cidr is not None:
            others.append(("bakery.overlay.cidr", overlay.cidr))
        for name, net in others:
            if az.subnet.overlaps(net):
                problems.append(Problem(f"{where}.subnet", f"{az.subnet} overlaps {name} {net}"))
        gateway = next(az.subnet.hosts(), None)
        if gateway in az.addresses:
            problems.append(
                Problem(
                    f"{where}.addresses",
                    f"{gateway} is the segment's router (the subnet's first host)",
                )
            )
        if az.nodes > az.subnet.num_addresses - 3:
            problems.append(
                Problem(f"{where}.subnet", f"{az.subnet} is too small for {az.nodes} node(s)")
            )
        subnets[label] = az.subnet
    return [str(p) for p in problems]


def machine_problems(settings: Settings, node_count: int) -> list[str]:
    """What this machine lacks for the cluster: root, tools, memory."""
    problems = []
    if os.geteuid() != 0:
        problems.append(
            "the local target needs root (network namespaces, taps, NAT): run it as root"
        )
    tools = dict(TOOLS)
    if settings.overlay.type == "nebula":
        tools |= OVERLAY_TOOLS
    missing = sorted({package for tool, package in tools.items() if shutil.which(tool) is None})
    if missing:
        problems.append(
            f"missing tools; install the packages {', '.join(missing)} "
            "(dev/install-local-tools installs every one)"
        )
    need = node_count * (settings.local.memory_mb + VM_OVERHEAD_MB) + BASE_NEED_MB
    available = _available_mb()
    if available is not None and available < need:
        problems.append(
            f"bakery.local.memory_mb: {node_count} VM(s) of {settings.local.memory_mb} MiB need "
            f"about {need} MiB; {available} MiB are available"
        )
    return problems


def _available_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def local_image(settings: Settings) -> BuildResult:
    """The local bake's result, checked against the config (PostgreSQL major)."""
    out = settings.local.image or Path("build") / settings.image.definition
    image = load_result(out)
    if not image.qcow2.exists():
        raise BakeryError(f"{out}: the build names {image.qcow2}, which does not exist; bake again")
    major = (image.manifest.get("components") or {}).get("postgresql", {}).get("major")
    wanted = settings.cluster.postgresql.major
    if major is not None and str(major) != str(wanted):
        raise ConfigError(
            [
                Problem(
                    "bakery.cluster.postgresql.major",
                    f"{wanted}, but the image {image.qcow2} carries PostgreSQL {major}: the "
                    "bundle must name the image's version",
                )
            ]
        )
    return image
