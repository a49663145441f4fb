"""Bring the test cloud up, down, or report on it.

python -m tests.cloud.stack up [--fresh]   start (reusing provisioned state unless --fresh)
python -m tests.cloud.stack down           stop every process of the stack by PID
python -m tests.cloud.stack status         what runs, what listens, where clouds.yaml is
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.owned_netns import NETNS_DIR, OWNED, sweep_stale

from . import config, guest, install, plugins, provision, schema, services, underlay
from .layout import HOST, PORTS, Layout
from .procs import Supervisor, listening_ports, rss_bytes

STATE_MARKER = ".bakery-cloud-state"
APIS = ("keystone", "glance", "placement", "nova", "neutron")
API_PROCESS = {"nova": "nova-api"}


class StackError(RuntimeError):
    pass


class Stack:
    def __init__(self, layout: Layout | None = None):
        self.layout = layout or Layout.default()
        self.supervisor = Supervisor(self.layout)
        self.venvs = {name: install.venv(name) for name in install.VENVS}
        self.procs = services.processes(self.layout, self.venvs)
        # PIDs of the processes that own guests' and networks' namespaces (nova-compute,
        # bakery-net), remembered at the stop for the leak check; what was swept.
        self.owners: set[int] = set()
        self.swept: list[str] = []

    # -- public -----------------------------------------------------------------------------
    def up(self, fresh: bool = False) -> dict:
        """Start the stack and return provisioned.json's content plus timing and memory."""
        if not install.is_installed():
            raise StackError("OpenStack venvs missing: run tests/cloud/setup first")
        if self.supervisor.recorded():
            self.down()
        else:
            self._sweep()  # what a stack killed without its stop left
        if busy := listening_ports():
            # Else the readiness checks would happily talk to someone else's services.
            raise StackError(f"ports {busy} are taken (another stack? BAKERY_CLOUD_PORT_BASE)")
        start = self._t0 = time.monotonic()
        warm = self.layout.provisioned.exists() and not fresh
        schema.ensure(self.venvs)
        if not warm:
            self._wipe()
        plugins.deploy(self.venvs)
        config.render_all(self.layout, self.venvs)
        if not warm:
            schema.copy_into(self.layout)
        (self.layout.data / "rabbitmq").mkdir(parents=True, exist_ok=True)
        self._mark(f"--- up ({'warm' if warm else 'cold'})")
        try:
            info = self._start(warm)
        except BaseException:
            self.down()
            raise
        info["bringup_seconds"] = round(time.monotonic() - start, 1)
        info["warm"] = warm
        self.layout.provisioned.write_text(json.dumps(info, indent=2))
        info["rss_bytes"] = rss_bytes(self.supervisor.members())
        info["processes"] = len(self.supervisor.members())
        info["swept"] = self.swept
        return info

    def down(self) -> None:
        """Stop every process of the stack by PID (guests, as nova-compute's children, get
        SIGTERM like the rest: their ACPI shutdown), then remove what the stopped owners
        left: guests' namespaces and disks, the networks."""
        self.owners |= set(self.supervisor.recorded().values())
        self.supervisor.stop(last=("rabbitmq", "epmd"))
        self._sweep()

    def _sweep(self) -> None:
        self.swept = guest.sweep(self.layout)
        self.swept += [f"namespace {line}" for line in sweep_stale()]

    def leftovers(self) -> dict[str, list]:
        """What would show that the stack still runs or leaked: its processes and ports, the
        guests' disks and VM processes, namespaces of its owners."""
        left = self.supervisor.leftovers()
        left["guests"] = guest.leftovers(self.layout)
        names = os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []
        left["namespaces"] = [
            name
            for name in sorted(names)
            if (match := OWNED.fullmatch(name)) and int(match["owner"]) in self.owners
        ]
        return left

    def info(self) -> dict:
        return json.loads(self.layout.provisioned.read_text())

    def status(self) -> dict:
        members = self.supervisor.members()
        return {
            "running": self.supervisor.recorded(),
            "exited": self.supervisor.exited(),
            "processes": len(members),
            "rss_bytes": rss_bytes(members),
            "listening_ports": listening_ports(),
            "provisioned": self.layout.provisioned.exists(),
            "clouds_yaml": str(self.layout.clouds_yaml),
            "admin_clouds_yaml": str(self.layout.admin_clouds_yaml),
        }

    # -- bring-up ---------------------------------------------------------------------------
    def _wipe(self) -> None:
        root = self.layout.root
        if root.exists():
            if any(root.iterdir()) and not (root / STATE_MARKER).exists():
                raise StackError(f"{root} is not a state dir of this stack: refusing to wipe it")
            shutil.rmtree(root)
        root.mkdir(parents=True)
        (root / STATE_MARKER).write_text("state of tests/cloud/stack.py; wiped on a fresh up\n")

    def _mark(self, event: str) -> None:
        """Timeline of the bring-up in logs/stack.log, to see where its time goes."""
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with open(self.layout.logs / "stack.log", "a") as log:
            log.write(f"{time.monotonic() - self._t0:7.1f} s  {event}\n")

    def _run(self, *names: str) -> None:
        self._mark(f"start {' '.join(names)}")
        for name in names:
            argv, env = self.procs[name]
            self.supervisor.start(name, argv, env)

    def _start(self, warm: bool) -> dict:
        layout, venvs = self.layout, self.venvs
        secrets = layout.secrets()
        since = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)

        def rabbit() -> None:
            # RabbitMQ's start scripts run Erlang helpers that start an `epmd -daemon` of their
            # own (outside the stop's reach) when ours does not answer yet: seen under load.
            self._run("epmd")
            self._wait_port("epmd", timeout=30)
            self._run("rabbitmq")
            self._wait_port("rabbitmq", timeout=60)
            self._mark("rabbitmq answers")

        def keystone() -> None:
            if not warm:
                services.write_keystone_keys(layout)
                services.bootstrap_keystone(layout, venvs["keystone"], secrets["admin"])
                self._mark("keystone bootstrapped")
            self._run("keystone")
            self._wait_api("keystone")
            self._mark("keystone answers")
            if not warm:
                provision.identity(layout)
                self._mark("identity provisioned")

        def nova() -> None:
            if not warm:
                services.map_cells(layout, venvs["nova"])
                self._mark("cells mapped")
            self._run("placement", "nova-api")
            rabbit_ready.result()
            identity_ready.result()  # the services check their credentials at start
            self._run("nova-conductor", "nova-scheduler")
            # The conductor's heartbeat is read through nova-api, which may still be starting.
            self._wait_api("nova")
            # A compute that starts first pings the conductor into the void and waits 10 s.
            provision.wait_for_service(layout, "nova-conductor", ["controller"], since)
            self._mark("nova-conductor up")
            self._run(*(name for name in self.procs if name.startswith("nova-compute-")))

        with ThreadPoolExecutor(max_workers=6) as pool:
            rabbit_ready = pool.submit(rabbit)
            identity_ready = pool.submit(keystone)
            steps = [rabbit_ready, identity_ready, pool.submit(nova)]
            self._run("glance", "neutron")
            for step in steps:
                step.result()
        for api in APIS:
            self._wait_api(api)
        self._mark("all APIs answer")
        provision.wait_for_service(layout, "nova-compute", config.COMPUTE_HOSTS, since)
        self._mark("compute hosts up")
        if warm:
            info = self.info()
        else:
            services.discover_hosts(layout, venvs["nova"])  # maps the hosts to cell1
            self._mark("hosts discovered")
            info = provision.resources(layout)
            self._mark("environments provisioned")
        self._networks(info)
        return info

    def _networks(self, info: dict) -> None:
        """bakery-net: a bridge per environment's network, routers, the public segment."""
        spec = self.layout.root / "net" / "spec.json"
        spec.parent.mkdir(exist_ok=True)
        spec.write_text(json.dumps(underlay.spec_from(info), indent=2))
        self._run("bakery-net")
        underlay.wait_ready(self.layout, self.supervisor.recorded()["bakery-net"])
        self._mark("networks built")

    def _check_alive(self, name: str) -> None:
        if name in self.supervisor.exited():
            log = self.layout.logs / f"{name}.log"
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
            raise StackError(f"{name} exited during bring-up; end of {log}:\n{tail}")

    def _wait_port(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((HOST, PORTS[name]), timeout=1).close()
                return
            except OSError:
                self._check_alive(name)
                if time.monotonic() > deadline:
                    raise StackError(f"{name} does not answer on {HOST}:{PORTS[name]}") from None
                time.sleep(0.2)

    def _wait_api(self, api: str, timeout: float = 120) -> None:
        """Until the API answers HTTP at all (a version document, or 401/300)."""
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{PORTS[api]}/"
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()  # noqa: S310 (loopback URL)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                self._check_alive(API_PROCESS.get(api, api))
                if time.monotonic() > deadline:
                    raise StackError(f"{api} does not answer on {url}") from None
                time.sleep(0.2)


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack")
    up.add_argument("--fresh", action="store_true", help="wipe the service state first")
    sub.add_parser("down", help="stop the stack")
    sub.add_parser("status", help="show what runs")
    args = parser.parse_args(argv)
    stack = Stack()
    if args.command == "up":
        info = stack.up(fresh=args.fresh)
        kind = "warm" if info["warm"] else "cold"
        print(f"cloud up ({kind}) in {info['bringup_seconds']} s, {info['processes']} processes, "
              f"RSS {_mib(info['rss_bytes'])}")  # fmt: skip
        print(f"export OS_CLIENT_CONFIG_FILE={info['clouds_yaml']}  # clouds: "
              f"{' '.join(info['clouds'])}; admin: {info['admin_clouds_yaml']}")  # fmt: skip
    elif args.command == "down":
        stack.down()
        left = stack.leftovers()
        for line in stack.swept:
            print(f"swept {line}")
        print(f"cloud down; left: {left}")
        return 1 if any(left.values()) else 0
    else:
        status = stack.status()
        status["rss"] = _mib(status.pop("rss_bytes"))
        print(json.dumps(status, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
