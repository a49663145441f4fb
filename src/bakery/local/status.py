"""`invoke status --target local`: the recorded local cluster, its VMs and what their consoles
report, as a table, and whether the cluster is healthy. Exit status as for the cloud
(docs/lifecycle.md): 0 healthy, 1 degraded (any problem, a failed job, a pending restart),
2 unreadable (no local cluster, or no node reported anything)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Settings
from . import health, owner, state


@dataclass(frozen=True)
class LocalStatus:
    heading: str
    table: str
    exit_code: int
    verdict: str  # "healthy: leader X", or what is wrong
    warnings: list[str] = field(default_factory=list)


def status(settings: Settings) -> LocalStatus:
    record = state.load(settings.state_dir)
    if record is None:
        return LocalStatus(
            "no local cluster of this config (start one: `invoke launch --target local`)",
            "",
            2,
            "unreadable: nothing recorded",
        )
    alive = owner.keeper_alive(record.run)
    keeper = "keeper running" if alive else "keeper gone: the next launch or destroy sweeps it"
    heading = f"local cluster {record.scope}: {record.run}, {record.status}, {keeper}"
    verdict = health.judge(settings, record, fresh=True)
    problems = list(verdict.problems) + ([] if alive else ["the keeper is gone"])
    if not any(health.node_reports(record).values()):
        code, text = 2, "unreadable: no node reported on its console"
    elif problems or verdict.warnings:
        code, text = 1, "degraded: " + "; ".join(problems or verdict.warnings)
    else:
        code, text = 0, f"healthy: leader {verdict.leader}"
    return LocalStatus(heading, health.status_table(record), code, text, verdict.warnings)
