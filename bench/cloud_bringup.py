"""Measure the cloud tier's bring-up: cold (service state wiped, venvs and DB templates kept)
and warm (provisioned state reused), plus the stop, for a few rounds.

    .venv/bin/python bench/cloud_bringup.py [--rounds N] [--record bench/results/cloud.jsonl]

Run tests/cloud/setup first; the stack must not be in use by anything else (it is restarted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cloud import install  # noqa: E402
from tests.cloud.stack import Stack  # noqa: E402


def _down(stack: Stack) -> float:
    start = time.monotonic()
    stack.down()
    took = time.monotonic() - start
    left = stack.supervisor.leftovers()
    if any(left.values()):
        raise SystemExit(f"stack left behind: {left}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--record", type=Path, help="append the medians as a JSON line here")
    args = parser.parse_args()
    if not install.is_installed():
        raise SystemExit("run tests/cloud/setup first")
    stack = Stack()
    _down(stack)
    # Other work on the machine shows in every number here: keep the load next to them.
    load_before = os.getloadavg()[0]
    rows = {"cold": [], "warm": [], "stop": [], "rss_mib": []}
    for round_ in range(args.rounds):
        for kind in ("cold", "warm"):
            info = stack.up(fresh=kind == "cold")
            assert info["warm"] == (kind == "warm")
            rows[kind].append(info["bringup_seconds"])
            rows["rss_mib"].append(info["rss_bytes"] / 2**20)
            rows["stop"].append(_down(stack))
            rss = info["rss_bytes"] / 2**20
            print(f"round {round_ + 1} {kind}: {info['bringup_seconds']:.1f} s, "
                  f"{info['processes']} processes, RSS {rss:.0f} MiB")  # fmt: skip
    print(f"\ncloud bring-up over {args.rounds} round(s) on {install.venv_root()}:")
    for name, values in rows.items():
        print(f"  {name:8} median {statistics.median(values):7.1f}  "
              f"min {min(values):7.1f}  max {max(values):7.1f}")  # fmt: skip
    if args.record:
        record = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "rounds": args.rounds,
            "load_before": load_before,
            **{f"{name}_median": round(statistics.median(v), 1) for name, v in rows.items()},
            **{f"{name}_all": [round(x, 1) for x in v] for name, v in rows.items()},
        }
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as out:
            out.write(json.dumps(record) + "\n")
    timeline = stack.layout.logs / "stack.log"
    print(f"\nlast bring-up's timeline ({timeline}):")
    print(timeline.read_text().rsplit("--- up", 1)[-1], end="")


if __name__ == "__main__":
    main()
