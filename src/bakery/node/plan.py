"""Which nodes exist where: names, AZs, environments, private and overlay addresses.

Overlay addresses are handed out in order from `overlay.first_node_address` (default: the first
usable address of the overlay CIDR), skipping lighthouses, and recorded in the state directory,
so a node keeps its address across re-renders and adding an AZ later moves nobody.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import BakeryError, ConfigError, Problem
from ..files import write_private

IPv4 = ipaddress.IPv4Address


@dataclass(frozen=True)
class Node:
    name: str
    az: str
    environment: str
    private_address: IPv4 | None
    overlay_address: IPv4 | None

    @property
    def address(self) -> IPv4:
        """The address the cluster speaks on: the overlay's when there is one."""
        address = self.overlay_address or self.private_address
        if address is None:
            raise BakeryError(f"node {self.name}: no address known")
        return address

    @property
    def addresses(self) -> list[IPv4]:
        return [a for a in (self.private_address, self.overlay_address) if a is not None]


@dataclass(frozen=True)
class Plan:
    nodes: list[Node]
    # Overlay allocations including those of nodes not in this plan; saved by `save`.
    overlay_allocations: dict[str, str]


def select_azs(settings: Settings, labels: Iterable[str]) -> list[str]:
    """The AZ labels to act on: those given (in order, once each), or all of the config's."""
    chosen = list(dict.fromkeys(labels)) or list(settings.azs)
    unknown = [label for label in chosen if label not in settings.azs]
    if unknown:
        raise ConfigError(
            [
                Problem(
                    "--az",
                    f"{label!r} is not an AZ label of this config; known: "
                    f"{', '.join(settings.azs)}",
                )
                for label in unknown
            ]
        )
    return chosen


def make_plan(
    settings: Settings,
    az_labels: Iterable[str],
    private_addresses: Mapping[str, IPv4] | None = None,
) -> Plan:
    """Name the nodes of the chosen AZs and give each its addresses. Writes nothing."""
    labels = select_azs(settings, az_labels)
    problems: list[Problem] = []
    drafts: list[tuple[str, str, str, IPv4 | None]] = []
    for name, label, configured in node_slots(settings, labels):
        address = configured
        if private_addresses and name in private_addresses:
            address = private_addresses[name]
        drafts.append((name, label, settings.azs[label].environment, address))
    if settings.overlay.type == "none":
        problems += [
            Problem(
                f"bakery.azs.{label}.addresses",
                f"node {name} has no address: without an overlay, the cluster speaks on the "
                "private address; give one per node to render without a cloud",
            )
            for name, label, _, address in drafts
            if address is None
        ]
    allocations = _load_allocations(settings)
    overlay: dict[str, IPv4 | None] = {name: None for name, *_ in drafts}
    if settings.overlay.type == "nebula":
        try:
            overlay.update(_allocate_overlay(settings, [d[0] for d in drafts], allocations))
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError(problems)
    nodes = [Node(name, label, env, address, overlay[name]) for name, label, env, address in drafts]
    return Plan(nodes, allocations)


def node_slots(settings: Settings, labels: Iterable[str]) -> list[tuple[str, str, IPv4 | None]]:
    """(name, AZ label, configured private address or None) of each node of the given AZs.

    Counters run per environment over every AZ of the config, so a node's name does not
    depend on which --az were given."""
    chosen = set(labels)
    counters: dict[str, int] = {}
    slots = []
    for label, az in settings.azs.items():
        for i in range(az.nodes):
            index = counters.get(az.environment, 0)
            counters[az.environment] = index + 1
            if label in chosen:
                name = f"{az.environment}-{settings.cluster.name_prefix}-{index}"
                slots.append((name, label, az.addresses[i] if i < len(az.addresses) else None))
    return slots


def dcs_survival_problems(settings: Settings, labels: list[str]) -> list[Problem]:
    """With nodes in two or more AZs, losing any one of them must leave a DCS majority;
    otherwise the surviving primary demotes itself and the database is down with that AZ.
    Checked over every AZ of the config (config.topology_problems), not only those rendered
    or launched at once: a cluster is often rendered one environment at a time."""
    if len(labels) < 2:
        return []
    members = settings.cluster.dcs.members
    problems = []
    for label in labels:
        survivors = sum(1 for m in members if m.failure_domain != label)
        if survivors * 2 <= len(members):
            problems.append(
                Problem(
                    "bakery.cluster.dcs.members",
                    f"losing AZ {label!r} leaves {survivors} of {len(members)} DCS members, "
                    "no majority: the cluster would go down with that AZ. Place a majority of "
                    "the members outside any single AZ (a third site: failure_domain 'external')",
                )
            )
    return problems


def _allocations_path(settings: Settings) -> Path:
    return settings.state_dir / "overlay-addresses.json"


def _load_allocations(settings: Settings) -> dict[str, str]:
    path = _allocations_path(settings)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BakeryError(f"{path}: unreadable overlay allocations ({error})") from None
    if not isinstance(data, dict):
        raise BakeryError(f"{path}: expected a JSON object of node name -> address")
    return {str(k): str(v) for k, v in data.items()}


def _allocate_overlay(
    settings: Settings, names: list[str], allocations: dict[str, str]
) -> dict[str, IPv4]:
    overlay = settings.overlay
    assert overlay.cidr is not None
    taken = {ipaddress.IPv4Address(a) for a in allocations.values()}
    taken |= {lh.overlay_address for lh in overlay.lighthouses}
    # DCS servers often live on the overlay too (the tutorial's Consul servers do).
    taken |= {a for a in _ipv4s(m.address for m in settings.cluster.dcs.members)}
    candidates = (
        a
        for a in overlay.cidr.hosts()
        if overlay.first_node_address is None or a >= overlay.first_node_address
    )
    result = {}
    for name in names:
        if name in allocations:
            address = ipaddress.IPv4Address(allocations[name])
            if address not in overlay.cidr:
                raise ConfigError(
                    [
                        Problem(
                            "bakery.overlay.cidr",
                            f"node {name} holds {address} (recorded in "
                            f"{_allocations_path(settings)}), outside {overlay.cidr}",
                        )
                    ]
                )
            result[name] = address
            continue
        address = next((a for a in candidates if a not in taken), None)
        if address is None:
            raise ConfigError(
                [
                    Problem(
                        "bakery.overlay.cidr",
                        f"{overlay.cidr} is exhausted from "
                        f"{overlay.first_node_address or 'its start'}: no address left for "
                        f"node {name}",
                    )
                ]
            )
        taken.add(address)
        allocations[name] = str(address)
        result[name] = address
    return result


def _ipv4s(texts: Iterable[str]) -> list[IPv4]:
    found = []
    for text in texts:
        try:
            found.append(ipaddress.IPv4Address(text))
        except ValueError:
            continue  # a host name
    return found


def save(settings: Settings, plan: Plan) -> None:
    """Record the overlay allocations (only once every check has passed)."""
    if settings.overlay.type == "nebula":
        write_private(
            _allocations_path(settings),
            json.dumps(plan.overlay_allocations, indent=2, sort_keys=True) + "\n",
        )
