"""bakery's own cost around a bake and a launch, on the cloud tier's loopback OpenStack.

The builder guest is played by the test driver (it "builds" in about a second), so the bake
figures are bakery's API calls, waits and polling, not a real build. Rounds alternate, side by
side:
- bake in one environment, then in two: the ratio shows whether environments really build in
  parallel (≈ 1: they do; ≈ 2: one after the other);
- launch of two nodes (one per environment), then their removal;
- launch to healthy cluster: from the launch's start until one leader and a streaming replica,
  the nodes being real guests (tests/cloud/guest.py) with the lighthouse and etcd outside both
  environments (tests/cloud/outside.py); the DCS keys are cleared between rounds.

    .venv/bin/python -m tests.cloud.stack up     # or let this script start it
    .venv/bin/python bench/cloud_workflow.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cloud.conftest import CloudTier  # noqa: E402
from tests.cloud.outside import LaunchedCluster  # noqa: E402
from tests.cloud.stack import Stack  # noqa: E402
from tests.cloud.workflow import cloud_env, cluster_config, remove_leftovers  # noqa: E402
from tests.helpers import INVOKE  # noqa: E402


def _timed(cloud, config: Path, *args: str) -> float:
    start = time.monotonic()
    result = subprocess.run(
        [str(INVOKE), "--search-root", str(ROOT), "-f", str(config), *args],
        env={**os.environ, **cloud_env(cloud)},
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{result.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stack = Stack()
    started = not stack.supervisor.recorded()
    info = stack.up() if started else stack.info()
    cloud = CloudTier(
        clouds_yaml=Path(info["clouds_yaml"]),
        clouds=tuple(info["clouds"]),
        admin_clouds_yaml=Path(info["admin_clouds_yaml"]),
        admin_cloud=info["admin_cloud"],
        info=info,
    )
    conns = [cloud.connect(name) for name in cloud.clouds]
    admin = cloud.connect(cloud.admin_cloud)
    names = ("bake, 1 environment", "bake, 2 environments", "launch, 2 nodes")
    names += ("launch to healthy cluster",)
    rows: dict[str, list[float]] = {name: [] for name in names}
    load = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = cluster_config(Path(tmp))
            _timed(cloud, config, "ca")
            outside = LaunchedCluster(config=config)
            try:
                outside.start_outside()
                for round_ in range(args.rounds):
                    rows["bake, 1 environment"].append(_timed(cloud, config, "bake", "-e", "e1"))
                    rows["bake, 2 environments"].append(_timed(cloud, config, "bake"))
                    started = time.monotonic()
                    rows["launch, 2 nodes"].append(_timed(cloud, config, "launch"))
                    outside.attach(dict(zip(cloud.clouds, conns, strict=True)), admin)
                    outside.wait_healthy(300)
                    rows["launch to healthy cluster"].append(time.monotonic() - started)
                    for conn in conns:
                        remove_leftovers(conn)
                    outside.clear_dcs()  # the next round's cluster bootstraps anew
                    last = ", ".join(f"{name} {v[-1]:.1f} s" for name, v in rows.items())
                    print(f"round {round_ + 1}: {last}")
            finally:
                for conn in conns:
                    remove_leftovers(conn)
                if not outside.teardown():
                    outside.remove_files()
    finally:
        for conn in conns:
            remove_leftovers(conn)
        if started:
            stack.down()
    print(f"\nover {args.rounds} rounds (load {load:.1f} at the start), median (min-max):")
    for name, values in rows.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"  {name:25} {statistics.median(values):6.1f} s ({spread})")
    one, two = (statistics.median(rows[name]) for name in names[:2])
    print(f"  two environments / one: {two / one:.2f}")


if __name__ == "__main__":
    main()
