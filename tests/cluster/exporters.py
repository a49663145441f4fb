"""The node's metrics services, started by the unit runner (units.py) as their units say: the
scrape guard (the image's bakery-scrape-guard.service: nft in the node's namespaces), then
node_exporter and postgres_exporter (Debian's units as installed here by setup, plus the
image's drop-ins from scripts/exporters). `bakery-job-metrics.path` watches a directory the
cluster tier does not use: it is not run here.
"""

from __future__ import annotations

from processes import Started

from bakery.node.monitoring import SERVICES

__all__ = ["SERVICES", "start"]

GUARD, NODE_EXPORTER, POSTGRES_EXPORTER, JOB_METRICS = SERVICES


def wanted(node) -> bool:
    """The node's runcmd enables the exporters (monitoring.exporters is on)."""
    runcmd = node.bundle.runcmd()
    return bool(runcmd) and NODE_EXPORTER in runcmd[0]


def start(node) -> list[Started]:
    """Load the guard, then start both exporters on `node` (they join `node.services`)."""
    if not wanted(node):
        return []
    if node.systemd.start_all([GUARD]):
        raise RuntimeError(f"{node.name}: {GUARD} failed: {node.systemd.notes[-1:]}")
    return [node.start_unit(name) for name in (NODE_EXPORTER, POSTGRES_EXPORTER)]
