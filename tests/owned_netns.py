"""Network namespaces of the test harnesses (render, cluster, image): named after the process
that owns them, removed together with whatever still runs inside, and swept when their owner
died without a teardown (SIGKILL, a crash).

A name is `bk<kind>-<owner pid>-<6 hex>` (a cluster run appends `-<host>`): the owner is in the
name itself, so a namespace is never without one, not even between its creation and a state
file being written. Namespaces named otherwise are never touched (the local target's own,
`bakery-<pid>-…`, are swept by bakery itself: bakery/local/owner.py). Killing what runs in a
namespace and deleting it are the product's primitives (bakery/local/netns.py).
"""

from __future__ import annotations

import os
import re
import secrets

from bakery.local.netns import (  # noqa: F401 - the harnesses import these from here
    NETNS_DIR,
    kill_processes_in,
    ns_inode,
    ns_path,
    pids_in_netns,
    remove,
)

OWNED = re.compile(r"bk[a-z]+-(?P<owner>\d+)-[0-9a-f]{6}(-[a-z0-9]+)?")


def owned_name(kind: str) -> str:
    """A fresh name for a namespace (or a run's prefix of names) owned by this process."""
    return f"bk{kind}-{os.getpid()}-{secrets.token_hex(3)}"


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
