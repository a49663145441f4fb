"""What the nodes say about themselves: `BAKERY-NODE` lines in console text, the cluster's
health judged from them, and the status table.

Every node's reporter (scripts/reporter) prints `BAKERY-NODE {json}` lines to its serial console
(format: docs/node-report.md). Whoever can read a console uses this module: the cloud through
Nova's console log, the local target through QEMU's serial file. Console text is hostile
ground: the kernel and journald interleave their own output, a line may be cut by the tail a
cloud keeps, and other programs print what they like. A line that does not parse is skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..image.manifest import console_objects

MARKER = "BAKERY-NODE"
FORMAT_VERSION = 1
LEADER_ROLE = "primary"


@dataclass(frozen=True)
class NodeReport:
    """One line of a node's reporter (docs/node-report.md names the short keys)."""

    node: str  # n
    seq: int  # q: counts up from 1 each time the reporter starts
    at: dt.datetime  # t: the node's clock, UTC
    build_id: str | None  # b: the image's build (/etc/bakery/manifest.json)
    role: str | None  # r: Patroni's role: primary, replica, ... (None: not readable)
    state: str | None  # s: Patroni's PostgreSQL state: running, starting, stopped, ...
    timeline: int | None  # tl
    replication: str | None  # rs: streaming, in archive recovery (replicas)
    lag: int | None  # lag: bytes behind the leader (0 on the leader)
    sync: bool  # sy: a synchronous standby
    pending_restart: bool  # pr
    failed_jobs: tuple[str, ...]  # f: bakery's jobs whose last run failed
    error: str | None  # e: why the state could not be read, or "reporter stopped"

    @classmethod
    def from_json(cls, data: object) -> NodeReport | None:
        """A report from one decoded line, or None when it is not one this version reads."""
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            return None
        try:
            at = dt.datetime.strptime(data["t"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            report = cls(
                node=_typed(data["n"], str),
                seq=_typed(data["q"], int),
                at=at,
                build_id=_optional(data.get("b"), str),
                role=_optional(data.get("r"), str),
                state=_optional(data.get("s"), str),
                timeline=_optional(data.get("tl"), int),
                replication=_optional(data.get("rs"), str),
                lag=_optional(data.get("lag"), int),
                sync=_typed(data.get("sy", False), bool),
                pending_restart=_typed(data.get("pr", False), bool),
                failed_jobs=tuple(_typed(j, str) for j in _typed(data.get("f", []), list)),
                error=_optional(data.get("e"), str),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return report if report.node else None

    @property
    def is_leader(self) -> bool:
        return self.error is None and self.role == LEADER_ROLE and self.state == "running"

    def age(self, now: dt.datetime) -> float:
        """Seconds since the report was written (never negative: clocks differ a little)."""
        return max(0.0, (now - self.at).total_seconds())


def _typed(value: object, kind: type):
    # bool is an int to Python; a report's numbers are never booleans.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}")
    return value


def _optional(value: object, kind: type):
    return None if value is None else _typed(value, kind)


def reports_in(text: str) -> Iterable[NodeReport]:
    """Every well-formed report in console text, in order. The marker may follow a prefix
    (journald's `[  12.3] bakery-reporter[42]: `, a getty prompt) and be followed by other
    output; a line that holds no whole object of a format this version reads is skipped."""
    for data in console_objects(text, MARKER + " "):
        report = NodeReport.from_json(data)
        if report is not None:
            yield report


def last_reports(text: str) -> dict[str, NodeReport]:
    """The last report of each node named in console text (the last line wins: a restarted
    reporter counts from 1 again)."""
    return {report.node: report for report in reports_in(text)}


def last_report(text: str, node: str) -> NodeReport | None:
    """The last report `node` wrote into this console; another node's lines do not count."""
    return last_reports(text).get(node)


# -- health -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """The cluster as its nodes' last reports show it."""

    problems: list[str]  # what makes it unhealthy: launch waits on them, a roll refuses
    warnings: list[str]  # degraded but not blocking: failed jobs, pending restarts
    leader: str | None

    @property
    def healthy(self) -> bool:
        return not self.problems


def stale_after(heartbeat: float) -> float:
    """A report older than this is not the node's present: two heartbeats and a minute."""
    return 2 * heartbeat + 60


def replica_problem(report: NodeReport, max_lag: int) -> str | None:
    """Why a node is not a healthy replica (streaming, lag known and under max_lag)."""
    if report.error is not None:
        return report.error
    if report.role != "replica" or report.state not in ("running", "streaming"):
        return f"{report.role or 'no role'}, {report.state or 'no state'}"
    if report.replication != "streaming":
        return f"replica, not streaming ({report.replication or 'no replication'})"
    if report.lag is None:
        return "replica, lag unknown"
    if report.lag > max_lag:
        return f"replica, {lag_text(report.lag)} behind (more than {lag_text(max_lag)})"
    return None


def judge(
    reports: Mapping[str, NodeReport | None],
    max_lag: int,
    now: dt.datetime,
    max_age: float | None = None,
) -> Health:
    """Healthy: every node reported (recently, when max_age is given), exactly one leader,
    and every other node a streaming replica at most max_lag bytes behind."""
    problems, warnings = [], []
    leaders = sorted(name for name, r in reports.items() if r is not None and r.is_leader)
    if not leaders:
        problems.append("no leader")
    elif len(leaders) > 1:
        problems.append(f"{len(leaders)} leaders: {', '.join(leaders)}")
    for name, report in sorted(reports.items()):
        if report is None:
            problems.append(f"{name}: no report on its console")
            continue
        if max_age is not None and report.age(now) > max_age:
            problems.append(f"{name}: last report {age_text(report.age(now))} old")
            continue
        if name not in leaders and (why := replica_problem(report, max_lag)) is not None:
            problems.append(f"{name}: {why}")
        if report.failed_jobs:
            warnings.append(f"{name}: failed jobs: {', '.join(report.failed_jobs)}")
        if report.pending_restart:
            warnings.append(f"{name}: PostgreSQL is pending a restart")
    return Health(problems, warnings, leaders[0] if len(leaders) == 1 else None)


# -- showing it -------------------------------------------------------------------------------


def lag_text(lag: int | None) -> str:
    if lag is None:
        return "-"
    size = float(lag)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def report_cells(report: NodeReport | None, now: dt.datetime) -> dict[str, str]:
    """The report's columns of the status table."""
    if report is None:
        return {"role": "-", "state": "no report", "tl": "-", "lag": "-", "report": "-"}
    state = report.error or report.replication or report.state or "-"
    if report.failed_jobs:
        state += f"; failed: {','.join(report.failed_jobs)}"
    role = (report.role or "-") + (" (sync)" if report.sync else "")
    return {
        "role": role,
        "state": state,
        "tl": "-" if report.timeline is None else str(report.timeline),
        "lag": lag_text(report.lag),
        "report": f"{age_text(report.age(now))} ago",
    }


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns, for a terminal or a log."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
