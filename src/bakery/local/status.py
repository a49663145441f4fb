"""`invoke status --target local`: the recorded local cluster, its VMs and what their consoles
report, as a table, and whether the cluster is healthy."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..errors import BakeryError
from . import health, owner, state


@dataclass(frozen=True)
class LocalStatus:
    heading: str
    table: str
    healthy: bool
    verdict: str  # "healthy: leader X" or the problems
    warnings: list[str]


def status(settings: Settings) -> LocalStatus:
    record = state.load(settings.state_dir)
    if record is None:
        raise BakeryError(
            "no local cluster of this config (start one: `invoke launch --target local`)"
        )
    alive = owner.keeper_alive(record.run)
    keeper = (
        "keeper running"
        if alive
        else "keeper gone: the next local launch or destroy sweeps what is left"
    )
    heading = f"local cluster {record.scope}: {record.run}, {record.status}, {keeper}"
    verdict = health.judge(settings, record)
    if verdict.healthy:
        text = f"healthy: leader {verdict.leader}"
    else:
        text = "not healthy: " + "; ".join(verdict.problems)
    healthy = verdict.healthy and alive
    return LocalStatus(heading, health.status_table(record), healthy, text, verdict.warnings)
