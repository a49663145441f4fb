"""`invoke status [--az …] [--json]`: the cluster as the cloud APIs and the nodes' consoles
show it, one row per node, and per environment the image generations and who runs them.

Exit status, for monitoring checks and CI: 0 healthy, 1 degraded (a problem, a failed job or a
pending restart), 2 no node could be read. The JSON document (`--json`) is stable; its format
is documented in docs/lifecycle.md and carries a version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..node import plan as planning
from ..node.report import NodeReport, age_text, report_cells, table
from .cluster import CloudNode, ClusterView, connections, read_cluster

FORMAT_VERSION = 1
HEALTHY, DEGRADED, UNREADABLE = 0, 1, 2


@dataclass(frozen=True)
class Status:
    view: ClusterView
    exit_code: int
    problems: list[str]
    warnings: list[str]
    leader: str | None

    @property
    def verdict(self) -> str:
        return {HEALTHY: "healthy", DEGRADED: "degraded", UNREADABLE: "unreadable"}[self.exit_code]


def status(settings: Settings, az_labels: Iterable[str] = ()) -> Status:
    labels = planning.select_azs(settings, az_labels)
    view = read_cluster(settings, labels, connections(settings, labels))
    return status_of(view, every_az=set(labels) == set(settings.azs))


def status_of(view: ClusterView, every_az: bool = True) -> Status:
    health = view.health()
    problems = health.problems
    if not every_az:  # the leader may well be in an AZ not shown
        problems = [p for p in problems if p != "no leader"]
    if not any(n.report is not None for n in view.launched()):
        code = UNREADABLE
    elif problems or health.warnings:
        code = DEGRADED
    else:
        code = HEALTHY
    return Status(view, code, problems, health.warnings, health.leader)


def as_text(result: Status) -> str:
    view = result.view
    headers = ["node", "env", "az", "server", "image", "role", "state", "tl", "lag", "report"]
    rows = []
    for node in view.nodes.values():
        cells = report_cells(node.report, view.read_at)
        server = node.server_status if node.launched else "not launched"
        rows.append(
            [node.name, node.environment, node.az, server, view.generation_state(node)]
            + [cells[k] for k in ("role", "state", "tl", "lag", "report")]
        )
    parts = [table(headers, rows), ""]
    for env, gens in view.generations.items():
        parts.append(f"environment {env}:")
        for gen in gens:
            users = _users(view, gen.image_id)
            note = f", in use by {', '.join(users)}" if users else ""
            mark = " (newest released)" if view.newest(env) == gen else ""
            parts.append(f"  {gen.name} {gen.status}{mark}{note}")
        if not gens:
            parts.append("  no bakery image")
    parts.append("")
    verdict = f"cluster {view.settings.cluster.scope}: {result.verdict}"
    if result.leader:
        verdict += f", leader {result.leader}"
    parts.append(verdict)
    parts += [f"  problem: {p}" for p in result.problems]
    parts += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(parts)


def as_json(result: Status) -> dict[str, Any]:
    view = result.view
    return {
        "version": FORMAT_VERSION,
        "cluster": view.settings.cluster.scope,
        "read_at": _time(view.read_at),
        "status": result.verdict,
        "exit_code": result.exit_code,
        "leader": result.leader,
        "max_lag": view.settings.max_lag,
        "problems": result.problems,
        "warnings": result.warnings,
        "nodes": [_node(view, node) for node in view.nodes.values()],
        "environments": [
            {
                "name": env,
                "generations": [
                    {
                        "name": gen.name,
                        "image_id": gen.image_id,
                        "build_id": gen.build_id,
                        "status": gen.status,
                        "created": _time(gen.created),
                        "newest_released": view.newest(env) == gen,
                        "nodes": _users(view, gen.image_id),
                    }
                    for gen in gens
                ],
            }
            for env, gens in view.generations.items()
        ],
    }


def _node(view: ClusterView, node: CloudNode) -> dict[str, Any]:
    server = node.server
    return {
        "name": node.name,
        "environment": node.environment,
        "az": node.az,
        "launched": node.launched,
        "server": None if server is None else {"id": server.id, "status": server.status},
        "port": None
        if node.port is None
        else {"id": node.port.id, "name": node.port.name, "address": node.address},
        "image": None
        if server is None
        else {
            "id": node.image_id,
            "name": node.generation.name if node.generation else None,
            "build_id": node.generation.build_id if node.generation else None,
            "generation": view.generation_state(node),
        },
        "report": _report(node.report, view),
    }


def _report(report: NodeReport | None, view: ClusterView) -> dict[str, Any] | None:
    if report is None:
        return None
    age = report.age(view.read_at)
    return {
        "at": _time(report.at),
        "age_seconds": round(age),
        "age": age_text(age),
        "seq": report.seq,
        "build_id": report.build_id,
        "role": report.role,
        "state": report.state,
        "timeline": report.timeline,
        "replication": report.replication,
        "lag": report.lag,
        "sync_standby": report.sync,
        "pending_restart": report.pending_restart,
        "failed_jobs": list(report.failed_jobs),
        "error": report.error,
    }


def _users(view: ClusterView, image_id: str) -> list[str]:
    return [n.name for n in view.nodes.values() if n.server is not None and n.image_id == image_id]


def _time(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
