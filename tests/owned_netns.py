"""Network namespaces of the test harnesses (render, cluster, image): named after the process
that owns them, removed together with whatever still runs inside, and swept when their owner
died without a teardown (SIGKILL, a crash).

A name is `bk<kind>-<owner pid>-<6 hex>` (a cluster run appends `-<host>`): the owner is in the
name itself, so a namespace is never without one, not even between its creation and a state
file being written. Namespaces named otherwise are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time

NETNS_DIR = "/run/netns"
OWNED = re.compile(r"bk[a-z]+-(?P<owner>\d+)-[0-9a-f]{6}(-[a-z0-9]+)?")


def owned_name(kind: str) -> str:
    """A fresh name for a namespace (or a run's prefix of names) owned by this process."""
    return f"bk{kind}-{os.getpid()}-{secrets.token_hex(3)}"


def ns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    """Every process whose network namespace is `inode` (postgres children included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
        except OSError:
            continue  # exited meanwhile; an exited (zombie) process has no namespace either
    return found


def kill_processes_in(inode: int, timeout: float = 10, spare: tuple[int, ...] = ()) -> list[int]:
    """SIGKILL every process in the namespace but `spare`, again until none is left (one may
    fork between the scan and the kill); returns those still there at the deadline."""
    deadline = time.monotonic() + timeout
    while pids := [pid for pid in pids_in_netns(inode) if pid not in spare]:
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return []


def remove(name: str) -> list[str]:
    """Kill what runs in namespace `name`, then delete it; returns what could not be done.
    A name that does not exist (never created, or already gone) is fine."""
    inode = ns_inode(ns_path(name))
    if inode is None:
        return []
    problems = [f"process {pid} in {name} survived SIGKILL" for pid in kill_processes_in(inode)]
    res = subprocess.run(
        ["ip", "netns", "delete", name],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode != 0:
        problems.append(f"ip netns delete {name}: {res.stderr.strip()}")
    return problems


def sweep_stale() -> list[str]:
    """Remove the namespaces (and their processes) of harness runs whose owner is gone; say
    what was removed. A PID reused by another process only delays the sweep to a later run."""
    if os.geteuid() != 0 or not os.path.isdir(NETNS_DIR):
        return []
    done = []
    for name in sorted(os.listdir(NETNS_DIR)):
        match = OWNED.fullmatch(name)
        if match is None or os.path.exists(f"/proc/{match['owner']}"):
            continue
        inode = ns_inode(ns_path(name))
        count = len(pids_in_netns(inode)) if inode is not None else 0
        problems = remove(name)
        done.append(
            f"{name} (owner {match['owner']} gone): {count} process(es) killed, "
            + ("; ".join(problems) if problems else "namespace deleted")
        )
    return done


def report_sweep(tier: str) -> None:
    """Sweep at a tier's start and print what was swept."""
    for line in sweep_stale():
        print(f"{tier} tier: swept a namespace left by a killed run: {line}", flush=True)
