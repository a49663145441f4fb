"""A local cluster's health, read from its VMs' serial consoles: the same `BAKERY-NODE` reports
a cloud's console log carries (bakery.node.report judges them), plus how far each node's boot
has come before its reporter speaks, for the progress display.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import BakeryError
from . import vms
from .state import RunRecord

if TYPE_CHECKING:
    from ..node.report import NodeReport

CHECK_EVERY = 2.0  # seconds between looks at the consoles
# Console text that shows how far a boot has come, last first.
BOOT_MARKS = (
    (" finished at ", "cloud-init done"),
    ("Cloud-init v.", "cloud-init"),
    ("Linux version", "booting"),
)


def console_text(node_dir: Path) -> str:
    path = vms.VmFiles(node_dir).console
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def boot_phase(text: str) -> str:
    for needle, phase in BOOT_MARKS:
        if needle in text:
            return phase
    return "starting"


def node_reports(record: RunRecord) -> dict[str, NodeReport | None]:
    from ..node.report import last_report

    return {n.name: last_report(console_text(Path(n.dir)), n.name) for n in record.nodes}


def progress(record: RunRecord) -> str:
    """One short phrase per node: its boot phase until it reports, then its role and state."""
    reports = node_reports(record)
    parts = []
    for node in record.nodes:
        report = reports[node.name]
        if report is None:
            parts.append(f"{node.name} {boot_phase(console_text(Path(node.dir)))}")
        elif report.error is not None:
            parts.append(f"{node.name} {report.error}")
        else:
            what = report.replication or report.state or "reporting"
            parts.append(f"{node.name} {report.role or '-'} {what}")
    return "; ".join(parts)


def vm_running(record: RunRecord, node_name: str) -> bool:
    node = next(n for n in record.nodes if n.name == node_name)
    return vms.running_pid(vms.VmFiles(Path(node.dir)), node.netns) is not None


def status_table(record: RunRecord, now: dt.datetime | None = None) -> str:
    from ..node.report import report_cells, table

    now = now or dt.datetime.now(dt.UTC)
    reports = node_reports(record)
    headers = ["node", "AZ", "address", "overlay", "VM", "role", "state", "tl", "lag", "report"]
    rows = []
    for node in record.nodes:
        cells = report_cells(reports[node.name], now)
        rows.append(
            [
                node.name,
                node.az,
                node.address,
                node.overlay_address or "-",
                "running" if vm_running(record, node.name) else "stopped",
                *(cells[key] for key in ("role", "state", "tl", "lag", "report")),
            ]
        )
    return table(headers, rows)


def judge(settings: Settings, record: RunRecord, fresh: bool = False):
    """The cluster's health from its last reports; `fresh`: a report older than two
    heartbeats and a minute no longer counts (for `status`; a launch waits on first reports)."""
    from ..node.report import judge as judge_reports
    from ..node.report import stale_after

    max_age = stale_after(settings.lifecycle.report_heartbeat) if fresh else None
    return judge_reports(node_reports(record), settings.max_lag, dt.datetime.now(dt.UTC), max_age)


class NotHealthy(BakeryError):
    """The cluster did not become healthy in time, or a VM stopped; the message says which."""


def wait_healthy(
    settings: Settings,
    record: RunRecord,
    started: float,
    log: Callable[[str], None],
    timeout: float,
) -> str:
    """Wait until one leader and streaming replicas report; show progress when it changes.
    Returns the status table. A VM that stops fails the wait at once."""
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        now = progress(record)
        if now != shown:
            log(f"{time.monotonic() - started:4.0f} s: {now}")
            shown = now
        health = judge(settings, record)
        if health.healthy:
            return status_table(record)
        stopped = [n.name for n in record.nodes if not vm_running(record, n.name)]
        if stopped:
            raise NotHealthy(
                f"VM {', '.join(stopped)} stopped during the launch; consoles: {consoles(record)}"
            )
        if time.monotonic() > deadline:
            raise NotHealthy(
                f"the cluster was not healthy within {timeout:.0f} s "
                f"({'; '.join(health.problems)}); consoles: {consoles(record)}"
            )
        time.sleep(CHECK_EVERY)


def consoles(record: RunRecord) -> str:
    return ", ".join(str(vms.VmFiles(Path(n.dir)).console) for n in record.nodes)
