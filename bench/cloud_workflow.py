"""bakery's own cost around a bake, a rebuild and a launch on the cloud tier's loopback
OpenStack, side by side with Packer's OpenStack builder, every HTTP request counted.

The guest is played by the test driver (a builder "builds" in about a second), so these
figures are API calls, waits and polling, not a real build. Every client talks to the stack
through a counting reverse proxy (tests/cloud/counting_proxy.py). Rounds interleave:
- Packer (Debian's `packer`, `communicator: none`: boot, power-off, snapshot, metadata, delete)
  in one environment, from the same base image and flavor;
- `invoke bake` in one environment, then in two (≈ 1: they build in parallel);
- `invoke rebuild` with nothing to do, two environments;
- Ctrl-C while two environments build: seconds from the signal to the exit, nothing left;
- launch of two nodes (one per environment), then their removal;
- launch to healthy cluster: from the launch's start until one leader and a streaming replica,
  the nodes being real guests (tests/cloud/guest.py) with the lighthouse and etcd outside both
  environments (tests/cloud/outside.py); `invoke launch` itself waits for that (from the
  consoles), so its row is launch to healthy as bakery sees it;
- roll of the two nodes onto a generation baked after the launch, while a client commits
  (tests/cluster/writer.py, from outside): the roll's wall time, each node's time (from its
  stop to a healthy cluster again) and the write interruption (the longest time without an
  acknowledged commit); then the cluster's removal, and the DCS keys are cleared between rounds.
Then one bake whose builder never finishes, with build_timeout 600: the polls a 10-minute
build costs (`--long-build 0` leaves it out).

    .venv/bin/python -m tests.cloud.stack up     # or let this script start it
    .venv/bin/python bench/cloud_workflow.py [--rounds N] [--long-build SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests" / "cluster"))  # the cluster tier's modules, by bare name

from harness import WriterLog, wait_for  # noqa: E402

from tests.cloud.conftest import CloudTier  # noqa: E402
from tests.cloud.counting_proxy import CountingProxy, Request  # noqa: E402
from tests.cloud.outside import LaunchedCluster  # noqa: E402
from tests.cloud.provision import BASE_IMAGE, upload_base_image, wait_for_image  # noqa: E402
from tests.cloud.stack import Stack  # noqa: E402
from tests.cloud.workflow import cluster_config, remove_leftovers  # noqa: E402
from tests.helpers import INVOKE  # noqa: E402

HANG_BASE = "bench hanging base"  # its guest never powers off (the driver's `hang` mode)
PACKER_TEMPLATE = {
    "builders": [
        {
            "type": "openstack",
            "cloud": "{{user `cloud`}}",
            "communicator": "none",
            "source_image_name": BASE_IMAGE,
            "flavor": "SCS-1V-2-10",
            "networks": ["{{user `network`}}"],
            "availability_zone": "az1",
            "instance_name": "{{user `name`}}",
            "image_name": "{{user `name`}}",
            # No builder guest: the driver keeps it running, and Packer's own stop step
            # powers it off (a guest that powered itself off before Packer saw it ACTIVE
            # would fail Packer's wait).
            "metadata": {"bench": "packer", "image_build_date": '{{isotime "2006-01-02"}}'},
            "image_tags": ["bench"],
        }
    ],
    "variables": {"cloud": "", "network": "", "name": ""},
}
ROWS = (
    "packer, 1 environment",
    "bake, 1 environment",
    "bake, 2 environments",
    "rebuild, nothing to do, 2 environments",
    "ctrl-c while building, 2 environments",
    "launch, 2 nodes",
    "roll, 2 nodes",
)


class Bench:
    def __init__(self, cloud: CloudTier, proxy: CountingProxy, tmp: Path):
        self.cloud = cloud
        self.proxy = proxy
        self.tmp = tmp
        self.clouds_yaml = proxy.write_clouds_yaml(cloud.clouds_yaml, tmp / "clouds.yaml")
        self.env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(self.clouds_yaml)}
        self.env["PYTHONWARNINGS"] = "ignore"
        for sub in ("config", "hanging", "long"):
            (tmp / sub).mkdir()
        # A guest that never powers off by mistake fails its round after 5 minutes.
        quick = {"image.build_timeout": 300}
        self.config = cluster_config(tmp / "config", **quick, **{"image.keep_released": 3})
        self.hanging = cluster_config(
            tmp / "hanging", **quick, **{"image.base_image": {"name": HANG_BASE}}
        )
        self.walls: dict[str, list[float]] = {row: [] for row in ROWS}
        self.counts: dict[str, list[int]] = {row: [] for row in ROWS}
        self.healthy: list[float] = []  # launch to healthy cluster, seconds
        self.last_output = ""  # the last line a timed command printed
        self.roll_nodes: list[float] = []  # each rolled node's seconds
        self.interruptions: list[float] = []  # the writes' longest pause during each roll

    def _invoke(self, config: Path, *args: str) -> list[str]:
        return [str(INVOKE), "--search-root", str(ROOT), "-f", str(config), *args]

    def record(self, row: str, wall: float, requests: list[Request]) -> None:
        self.walls[row].append(wall)
        self.counts[row].append(len(requests))

    def timed(self, row: str, argv: list[str], **kwargs) -> None:
        self.proxy.take()
        start = time.monotonic()
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, **kwargs)
        wall = time.monotonic() - start
        if result.returncode != 0:
            raise SystemExit(f"{row} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        self.record(row, wall, self.proxy.take())
        self.last_output = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    def packer(self, round_: int) -> None:
        template = self.tmp / "packer.json"
        template.write_text(json.dumps(PACKER_TEMPLATE, indent=2))
        network = self.cloud.info["environments"]["test-env1"]["network_id"]
        name = f"bench-packer-{round_}-{os.getpid()}"
        argv = ["packer", "build", "-color=false"]
        argv += ["-var", "cloud=test-env1", "-var", f"network={network}", "-var", f"name={name}"]
        home = self.tmp / "packer-home"
        home.mkdir(exist_ok=True)
        env = {**self.env, "HOME": str(home), "CHECKPOINT_DISABLE": "1"}
        self.proxy.take()
        start = time.monotonic()
        result = subprocess.run([*argv, str(template)], env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        if result.returncode != 0:
            raise SystemExit(f"packer failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        self.record(ROWS[0], wall, self.proxy.take())
        conn = self.cloud.connect("test-env1")
        for image in conn.image.images(name=name):
            conn.image.delete_image(image)

    def ctrl_c(self) -> None:
        """Seconds from SIGINT to the exit of a bake whose builders run in both environments."""
        conns = [self.cloud.connect(name) for name in self.cloud.clouds]
        self.proxy.take()
        start = time.monotonic()
        proc = subprocess.Popen(
            self._invoke(self.hanging, "bake"),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # A shell without job control starts background commands with SIGINT ignored,
            # and a child inherits that: the bake must see the Ctrl-C it is sent.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            while not all(list(conn.compute.servers()) for conn in conns):
                if proc.poll() is not None or time.monotonic() - start > 120:
                    raise SystemExit(f"the builders did not start: {proc.communicate()[0]}")
                time.sleep(0.2)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=300)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 130:
            raise SystemExit(f"Ctrl-C: exit code {proc.returncode}:\n{output}")
        left = [s.name for conn in conns for s in conn.compute.servers()]
        left += [p.name for c in conns for p in c.network.ports() if "bakery" in (p.tags or [])]
        if left:
            raise SystemExit(f"Ctrl-C left behind: {left}; the bake said:\n{output}")
        self.record(ROWS[4], took, self.proxy.take())

    def roll(self, outside: LaunchedCluster) -> None:
        """A new generation, then `invoke roll` while a client commits through the leader."""
        subprocess.run(
            self._invoke(self.config, "bake"), env=self.env, check=True, capture_output=True
        )
        leader, _ = outside.wait_healthy(60)
        sql = "DROP TABLE IF EXISTS bench_roll; CREATE TABLE bench_roll (id int PRIMARY KEY)"
        outside.psql.query(outside.node(leader).target, sql)
        writer = outside.start_writer("bench_roll", seconds=1800)
        try:
            wait_for("commits", lambda: len(WriterLog.read(writer).acked) >= 20, 60)
            self.timed(ROWS[6], self._invoke(self.config, "roll"))
            rolled = time.time()
            wait_for("commits after the roll", lambda: max(_acked_at(writer)) > rolled, 120)
        finally:
            outside.sup.stop(writer, signal.SIGTERM, timeout=15)
        times = sorted(_acked_at(writer))
        self.interruptions.append(max(b - a for a, b in zip(times, times[1:], strict=False)))
        self.roll_nodes += [float(s) for s in re.findall(r" (\d+) s[,)]", self.last_output)]

    def long_build(self, seconds: int) -> list[Request]:
        """A builder that never finishes, polled until build_timeout: what the waiting costs."""
        config = cluster_config(
            self.tmp / "long",
            **{"image.base_image": {"name": HANG_BASE}, "image.build_timeout": seconds},
        )
        self.proxy.take()
        result = subprocess.run(
            self._invoke(config, "bake", "-e", "e1"), env=self.env, capture_output=True, text=True
        )
        if f"timed out after {seconds} s" not in result.stderr:
            raise SystemExit(f"the long build did not time out:\n{result.stderr[-3000:]}")
        return self.proxy.take()


def _acked_at(writer) -> list[float]:
    return [epoch for _, epoch in WriterLog.read(writer).acked.values()]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long-build", type=int, default=600, help="seconds; 0: leave out")
    args = parser.parse_args()
    if shutil.which("packer") is None:
        subprocess.run([str(ROOT / "dev/apt-install"), "packer"], check=True)
    stack = Stack()
    started = not stack.supervisor.recorded()
    info = stack.up() if started else stack.info()
    cloud = CloudTier.of(info)
    conns = [cloud.connect(name) for name in cloud.clouds]
    admin = cloud.connect(cloud.admin_cloud)
    load = os.getloadavg()[0]
    long_requests: list[Request] = []
    try:
        for conn in conns:
            remove_leftovers(conn, (HANG_BASE,))
            # Not labelled debian 12: the rounds that find their base by SCS properties must
            # never take it.
            hang = upload_base_image(conn, HANG_BASE, bakery_test_mode="hang", os_distro="none")
            wait_for_image(conn, hang.id)
        with tempfile.TemporaryDirectory() as tmp, CountingProxy() as proxy:
            bench = Bench(cloud, proxy, Path(tmp))
            subprocess.run(bench._invoke(bench.config, "ca"), env=bench.env, check=True)
            outside = LaunchedCluster(config=bench.config)
            try:
                outside.start_outside()
                for round_ in range(args.rounds):
                    bench.packer(round_)
                    bench.timed(ROWS[1], bench._invoke(bench.config, "bake", "-e", "e1"))
                    bench.timed(ROWS[2], bench._invoke(bench.config, "bake"))
                    bench.timed(ROWS[3], bench._invoke(bench.config, "rebuild"))
                    bench.ctrl_c()
                    launched = time.monotonic()
                    bench.timed(ROWS[5], bench._invoke(bench.config, "launch"))
                    outside.attach(dict(zip(cloud.clouds, conns, strict=True)), admin)
                    outside.wait_healthy(300)
                    bench.healthy.append(time.monotonic() - launched)
                    bench.roll(outside)
                    for conn in conns:
                        remove_leftovers(conn)
                    outside.clear_dcs()  # the next round's cluster bootstraps anew
                    last = ", ".join(
                        f"{row} {bench.walls[row][-1]:.1f} s/{bench.counts[row][-1]} requests"
                        for row in ROWS
                    )
                    print(
                        f"round {round_ + 1}: {last}, healthy {bench.healthy[-1]:.1f} s, write "
                        f"interruption during the roll {bench.interruptions[-1]:.1f} s",
                        flush=True,
                    )
            finally:
                for conn in conns:
                    remove_leftovers(conn)
                if not outside.teardown():
                    outside.remove_files()
            if args.long_build:
                print(f"a builder that never finishes, for {args.long_build} s ...", flush=True)
                long_requests = bench.long_build(args.long_build)
    finally:
        for conn in conns:
            remove_leftovers(conn, (HANG_BASE,))
        if started:
            stack.down()
    _report(bench, args, load, long_requests)


def _report(bench: Bench, args, load: float, long_requests: list[Request]) -> None:
    walls, counts = bench.walls, bench.counts
    print(f"\nover {args.rounds} rounds (load {load:.1f} at the start), median (min-max):")
    for row in ROWS:
        spread = f"{min(walls[row]):.1f}-{max(walls[row]):.1f}"
        requests = f"{_median(counts[row]):.0f} requests ({min(counts[row])}-{max(counts[row])})"
        print(f"  {row:40} {_median(walls[row]):5.1f} s ({spread})  {requests}")
    packer, one, two = (_median(walls[row]) for row in ROWS[:3])
    packer_n, one_n = (_median(counts[row]) for row in ROWS[:2])
    noop, noop_n = _median(walls[ROWS[3]]), max(counts[ROWS[3]])
    healthy = f"{min(bench.healthy):.1f}-{max(bench.healthy):.1f}" if bench.healthy else "-"
    print(f"  launch to healthy cluster {_median(bench.healthy):.1f} s ({healthy})")
    for name, values in (
        ("per node", bench.roll_nodes),
        ("write interruption", bench.interruptions),
    ):
        spread = f"{min(values):.1f}-{max(values):.1f}" if values else "-"
        print(f"  roll, {name} {_median(values):.1f} s ({spread})")
    print("\ngoals:")
    print(
        f"  Bake, one environment: wall {one:.1f} s = {one / packer:.2f}x Packer's {packer:.1f} s"
        f" (goal <= 0.7x), requests {one_n:.0f} vs Packer's {packer_n:.0f} (goal <= Packer's)"
    )
    print(f"  Bake, two environments: {two / one:.2f}x one environment (goal <= 1.1x)")
    print(
        f"  No-op rebuild, two environments: {noop_n} requests in all (goal <= 6), "
        f"{noop:.2f} s (goal < 1 s)"
    )
    ctrl_c = _median(walls[ROWS[4]])
    print(f"  Ctrl-C while building: exit {ctrl_c:.1f} s after the signal (goal <= 2 s)")
    if long_requests:
        # From the builder's creation to the timeout (its removal follows the first DELETE).
        created = next(i for i, r in enumerate(long_requests) if r.kind.endswith("/servers"))
        waited = long_requests[created + 1 :]
        waited = waited[: next(i for i, r in enumerate(waited) if r.method == "DELETE")]
        polls = [r for r in waited if r.service == "nova" and "/servers/" in r.path]
        print(
            f"  With a builder that runs for {args.long_build / 60:.0f} minutes, the "
            f"console/status polling adds {len(polls)} requests (goal: about 120 at most)"
        )


if __name__ == "__main__":
    main()
