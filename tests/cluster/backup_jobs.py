"""The image's backup timers, run as their units say: the timer names its service, the service
its user, group and command; the node's schedule drop-in (from the bundle) must be there.

Timers do not run here (no systemd in the namespaces): a test starts the job a timer would
start, inside the node's namespaces, with the environment systemd gives a service.
"""

from __future__ import annotations

import subprocess

from bundle import REPO
from nodes import Node
from units import Unit

UNITS = REPO / "scripts" / "pgbackrest" / "files"
# What systemd puts in a service's environment for User= (no PATH from the caller).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def schedule(node: Node, timer: str) -> str:
    """The calendar the node's timer fires on: the image's unit, then the bundle's drop-in."""
    dropin = node.file(f"/etc/systemd/system/{timer}.d/bakery-schedule.conf")
    dropins = [dropin] if dropin.exists() else []
    return Unit.load(UNITS / timer, dropins).value("Timer", "OnCalendar")


def run_timer_job(node: Node, timer: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start the service `timer` starts, on `node`, as the service's unit says."""
    service = node.systemd.unit(timer).timer_target
    unit = node.systemd.unit(service)  # a `name@instance` service from its template
    user, group = unit.user, unit.group
    assert user == group == "postgres", "the harness runs jobs as postgres only"
    (command,) = unit.commands("ExecStart")
    env = {
        "PATH": SYSTEMD_PATH,
        "HOME": "/var/lib/postgresql",
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
    }
    argv = command.argv(env, service)
    return node.enter(argv, user=user, timeout=timeout, env=env, check=False)
