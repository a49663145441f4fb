"""What a database operator waits for, measured on a real two-node cluster built by the cluster
tier's harness from `invoke render` output (Patroni 4, PostgreSQL 14, etcd, Nebula).

Per run, on a fresh cluster: time to leader and to a streaming replica (from Patroni's start),
planned switchover (request -> the new leader commits a write), and failover (kill -9 of every
process of the leader node -> the first commit the new leader acknowledges to a client that
kept writing). Also counts acknowledged commits missing after the failover.

Settings: the shipped defaults (ttl 30, loop_wait 10, retry_timeout 10), the tightest timings
bakery accepts (ttl 20, loop_wait 1, retry_timeout 3), and the tightest with synchronous mode.

Run as root after tests/cluster/setup:
    .venv/bin/python bench/cluster_timings.py [RUNS] [SETTING ...]
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The harness's own modules, and the `tests` package it shares with the other tiers.
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT)]

from harness import Cluster, WriterLog, wait_for  # noqa: E402

TIGHTEST = {
    "cluster.patroni.ttl": 20,
    "cluster.patroni.loop_wait": 1,
    "cluster.patroni.retry_timeout": 3,
}
SETTINGS = {
    "defaults": {},
    "tightest": TIGHTEST,
    "tightest+sync": TIGHTEST | {"cluster.patroni.synchronous_mode": True},
}
METRICS = ["leader", "streaming", "switchover", "failover"]
LABELS = {
    "leader": "time to leader",
    "streaming": "time to streaming replica",
    "switchover": "switchover -> writes",
    "failover": "kill -9 -> writes",
}


def wait_sync(c: Cluster, overrides: dict) -> None:
    """In synchronous mode only the synchronous standby may take over."""
    if overrides.get("cluster.patroni.synchronous_mode"):
        wait_for(
            "a synchronous standby",
            lambda: any(m["role"] == "sync_standby" for m in c.members() or []),
            60,
        )


def one_run(overrides: dict) -> tuple[dict[str, float], int, int]:
    """Returns the timings, the acknowledged commits lost, and those acknowledged in all."""
    c = Cluster(dict(overrides))
    try:
        c.build()
        c.start()
        times = dict(c.times)

        leader, replica = c.wait_healthy(120)
        wait_sync(c, overrides)
        t0 = time.monotonic()
        resp = c.switchover(leader, replica)
        if resp.status != 200:
            raise RuntimeError(f"switchover refused: {resp.status} {resp.body}")
        times["switchover"] = c.wait_writable(replica, 60) - t0

        leader, replica = c.wait_healthy(120)
        wait_sync(c, overrides)
        c.psql.query(c.node(leader).target, "CREATE TABLE bench_acked (id int PRIMARY KEY)")
        writer = c.start_writer("bench_acked")
        try:
            wait_for("20 acknowledged commits", lambda: len(WriterLog.read(writer).acked) >= 20, 60)
            killed_wall = time.time()
            c.node(leader).kill9()
            new_leader, _ = c.wait_leader(90, not_=leader)
            wait_for(
                "a commit on the new leader",
                lambda: WriterLog.read(writer).acked_by(new_leader, killed_wall),
                60,
            )
        finally:
            c.sup.stop(writer, signal.SIGTERM, timeout=15)
        log = WriterLog.read(writer)
        first = min(t for n, t in log.acked.values() if n == new_leader and t > killed_wall)
        times["failover"] = first - killed_wall
        rows = c.psql.query(c.node(new_leader).target, "SELECT id FROM bench_acked")
        lost = len(set(log.acked) - {int(r) for r in rows.split()})
        return times, lost, len(log.acked)
    finally:
        leaks = c.teardown()
        if leaks:
            raise RuntimeError(f"harness left things behind: {leaks}")
        c.remove_files()


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line),
        platform.machine(),
    )
    mem = next(int(line.split()[1]) for line in meminfo if "MemTotal" in line)
    return f"{model}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB, Linux {platform.release()}"


def main(runs: int, names: list[str]) -> None:
    results: dict[str, dict[str, list[float]]] = {}
    losses: dict[str, tuple[int, int]] = {}
    for name in names:
        results[name] = {m: [] for m in METRICS}
        lost_total = acked_total = 0
        for i in range(runs):
            started = time.monotonic()
            times, lost, acked = one_run(SETTINGS[name])
            lost_total += lost
            acked_total += acked
            for m in METRICS:
                results[name][m].append(times[m])
            print(
                f"{name} run {i + 1}/{runs}: "
                + ", ".join(f"{m} {times[m]:.1f} s" for m in METRICS)
                + f", lost {lost}/{acked} acked "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        losses[name] = (lost_total, acked_total)

    print(f"\nmachine: {machine()}; {runs} runs per setting; median (min-max), seconds\n")
    header = "| metric | " + " | ".join(names) + " |"
    print(header)
    print("|" + "---|" * (len(names) + 1))
    for m in METRICS:
        cells = []
        for name in names:
            s = results[name][m]
            cells.append(f"{statistics.median(s):.1f} ({min(s):.1f}-{max(s):.1f})")
        print(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    cells = [f"{losses[n][0]} of {losses[n][1]}" for n in names]
    print("| acknowledged commits lost | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    count = int(args.pop(0)) if args and args[0].isdigit() else 5
    chosen = args or list(SETTINGS)
    unknown = [n for n in chosen if n not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting {unknown}; known: {', '.join(SETTINGS)}")
    main(count, chosen)
