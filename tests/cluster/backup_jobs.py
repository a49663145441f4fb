"""The image's backup timers, run as their units say: the timer names its service, the service
its user, group and command; the node's schedule drop-in (from the bundle) must be there.

Timers do not run here (no systemd in the namespaces): a test starts the job a timer would
start, inside the node's namespaces, with the environment systemd gives a service.
"""

from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

from bundle import REPO
from nodes import Node

UNITS = REPO / "scripts" / "pgbackrest" / "files"
# What systemd puts in a service's environment for User= (no PATH from the caller).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unit(path: Path) -> configparser.ConfigParser:
    # Unit files repeat keys (two ConditionPathExists=, OnCalendar= resets): keep the last.
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def schedule(node: Node, timer: str) -> str:
    """The calendar the node's timer fires on: the image's unit, then the bundle's drop-in."""
    calendar = _unit(UNITS / timer).get("Timer", "OnCalendar")
    dropin = node.file(f"/etc/systemd/system/{timer}.d/bakery-schedule.conf")
    return _unit(dropin).get("Timer", "OnCalendar") if dropin.exists() else calendar


def run_timer_job(node: Node, timer: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start the service `timer` starts, on `node`, as the service's unit says."""
    service = _unit(UNITS / timer).get("Timer", "Unit")
    template, _, instance = service.partition("@")
    instance = instance.removesuffix(".service")
    unit = _unit(UNITS / (f"{template}@.service" if instance else service))
    section = unit["Service"]
    user, group = section["User"], section["Group"]
    assert user == group == "postgres", "the harness runs jobs as postgres only"
    argv = shlex.split(section["ExecStart"].replace("%i", instance))
    env = {
        "PATH": SYSTEMD_PATH,
        "HOME": "/var/lib/postgresql",
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
    }
    return node.enter(argv, user=user, timeout=timeout, env=env, check=False)
