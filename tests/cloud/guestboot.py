"""The VM process of a cloud-tier guest (`python -m tests.cloud.guest boot --disk DIR`): what a
server's kernel, systemd and cloud-init do, on the cluster tier's node machinery.

Boot:
1. the guest's network namespace (guest.json `netns`) with eth0: the port's MAC and address,
   a default route through its environment's router, cabled to the bridge of the port's
   network (tests/cloud/underlay.py);
2. at the first boot the image's own directories and files (guestimage.py) and the node-layout
   directories on the disk; then the cluster tier's Node: a holder process keeps the guest's
   mount and UTS namespaces (hostname = the server's), the disk's root/ is bind-mounted over the
   node paths and the image's directories, and a FIFO over /dev/console and /dev/ttyS0, which
   this process copies into console.log;
3. the units the image enables with DefaultDependencies=no (the metadata guard: nftables in the
   guest's own namespace, before anything else runs);
4. cloud-init, once per instance: write_files as cloud-init writes them (owner, mode,
   encoding), then runcmd, whose `systemctl [--no-reload] [--now] enable|disable|start|stop|
   restart UNIT...` act on the guest's units (units.py); any other command is not run and
   fails, as cloud-init reports a failing runcmd. At later boots the units that runcmd enabled
   start instead;
5. cloud-init's final line, then the other units the image enables;
6. then it watches: Restart= and timers of the units, nova-compute alive (else a power cut).
All the while a thread reaps the orphans it adopts (it is the guest's subreaper, as systemd is
PID 1): Patroni waits for its postmaster, which has left it, to be gone, and a zombie is not.

SIGTERM is the ACPI power button: the units stop in reverse start order (ExecStop, KillSignal,
SIGKILL at TimeoutStopSec), what is left gets SIGTERM and then SIGKILL (systemd-shutdown),
`reboot: Power down` goes to the console, the namespace is deleted, and the process ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import shlex
import signal
import threading
import time
import traceback
from pathlib import Path

import yaml
from bundle import NodeBundle, place
from netns import Host, cable, run
from nodes import MOUNTS, Node
from processes import Supervisor, start_time, wait_gone
from units import boolean

from tests.owned_netns import remove

from . import guestimage
from .guest import GUEST, RUN, owner_alive, read, write

CLOUD_INIT_VERSION = "22.4.2"  # Debian 12's, the golden image's base
STATE = "state.json"
PR_SET_CHILD_SUBREAPER = 36
SHUTDOWN_GRACE = 10.0  # systemd-shutdown's SIGTERM-to-SIGKILL wait is 90 s; nothing here needs it


class Console:
    """The serial console: console.log, written by this process and, through a FIFO mounted
    over /dev/console and /dev/ttyS0, by anything inside the guest."""

    def __init__(self, disk: Path):
        self.fifo = disk / "console.fifo"
        self.fd = os.open(disk / "console.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def line(self, text: str) -> None:
        os.write(self.fd, (text.rstrip("\n") + "\n").encode())

    def relay(self) -> None:
        self.fifo.unlink(missing_ok=True)
        os.mkfifo(self.fifo, 0o600)
        # Read and write end in one: writers never block on open, the reader never sees EOF.
        reader = os.open(self.fifo, os.O_RDWR)
        threading.Thread(target=self._copy, args=(reader,), daemon=True).start()

    def _copy(self, reader: int) -> None:
        while data := os.read(reader, 65536):
            os.write(self.fd, data)


class VM:
    def __init__(self, disk: Path):
        self.disk = disk
        self.spec = read(disk, GUEST)
        self.state = read(disk, STATE) or {"boots": 0, "instance": None, "enabled": []}
        self.console = Console(disk)
        self.journal = disk / "journal"
        self.journal.mkdir(exist_ok=True)
        self.booted = time.monotonic()
        self.power_button = threading.Event()
        self.node: Node | None = None
        self._noted = 0
        self.child_exited = threading.Event()

    @property
    def netns(self) -> str:
        return self.spec["netns"]

    def note(self, text: str) -> None:
        """The VM process's own log (journal/runner.log), not the console."""
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        with open(self.journal / "runner.log", "a") as log:
            log.write(f"{stamp} {text}\n")

    # --- boot ---------------------------------------------------------------------------------
    def boot(self) -> None:
        spec = self.spec
        self.state["boots"] += 1
        write(self.disk, STATE, self.state)
        self.console.relay()
        self.console.line(
            f"bakery-guest: boot {self.state['boots']} of {spec['hostname']} ({spec['uuid']}) "
            f"on {spec['host']}"
        )
        write(self.disk, RUN, {"runner": os.getpid(), "runner_started": start_time(os.getpid())})
        self._plug()
        image = guestimage.for_image(spec["image"].get("properties", {}))
        self.node = self._node()
        if self.state["instance"] != spec["uuid"]:  # a new disk: as the image made it
            self.node.make_dirs()
            for problem in image.install(self.node.root):
                self.note(f"image file not placed: {problem}")
        # /run is a tmpfs: empty at every boot (a power cut leaves PostgreSQL's socket lock
        # file there, naming a PID that may belong to someone else by now).
        for left in (self.node.root / "run").rglob("*"):
            if not left.is_dir():
                left.unlink()
        self.node.boot()
        self.node.systemd.units = image.units
        run_state = read(self.disk, RUN) | {"holder": self.node.holder.pid}
        write(self.disk, RUN, run_state | {"holder_started": self.node.holder.started})
        enabled = [u for u in image.enabled if u in image.units]
        for unit in image.enabled:
            if unit not in image.units:
                self.note(f"{unit}: the distribution's own unit, not run by the test guest")
        early = [u for u in enabled if not self._default_dependencies(u)]
        self._start(early)
        self._cloud_init()
        uptime = time.monotonic() - self.booted
        now = dt.datetime.now(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        self.console.line(
            f"Cloud-init v. {CLOUD_INIT_VERSION} finished at {now}. Datasource "
            f"DataSourceOpenStackLocal [net,ver=2].  Up {uptime:.2f} seconds"
        )
        self._start([u for u in enabled if u not in early])
        self._flush_notes()

    def _default_dependencies(self, name: str) -> bool:
        """False for units that run before the basic system (sysinit), like the guard."""
        unit = self.node.systemd.unit(name)
        return boolean(unit.value("Unit", "DefaultDependencies"), True)

    def _plug(self) -> None:
        """The guest's network namespace and its eth0 on the port's network."""
        spec = self.spec
        run("ip", "netns", "add", self.netns)
        run("ip", "-n", self.netns, "link", "set", "lo", "up")
        port = spec.get("network")
        if not port:
            return
        built = json.loads(Path(spec["net_json"]).read_text())
        segment = built["networks"].get(port["id"])
        if segment is None:
            raise RuntimeError(f"network {port['id']} has no segment in the test cloud")
        address = f"{port['address']}/{port['prefix']}"
        cable(segment["switch"], spec["veth"], self.netns, "eth0", address, port["mac"])
        if port.get("gateway"):
            run("ip", "-n", self.netns, "route", "add", "default", "via", port["gateway"])

    def _node(self) -> Node:
        spec, root = self.spec, self.disk / "root"
        user_data = self._user_data() or {}
        address = (spec.get("network") or {}).get("address", "")
        bundle = NodeBundle(spec["hostname"], "", address, "", user_data, None)
        host = Host(spec["hostname"], self.netns, address, spec.get("veth", ""))
        mounts = [(str(root / d.lstrip("/")), d) for d in guestimage.MOUNTED]
        for device in ("/dev/console", "/dev/ttyS0"):
            if os.path.exists(device):
                mounts.append((str(self.console.fifo), device))
        sup = Supervisor(self.journal)
        threading.Thread(target=self.reaper, args=(sup,), daemon=True).start()
        return Node(bundle, host, root, sup, extra_mounts=mounts, console=self.console.line)

    def _user_data(self) -> dict | None:
        try:
            raw = (self.disk / "user-data").read_bytes()
        except FileNotFoundError:
            return None
        if not raw.startswith(b"#cloud-config"):
            if raw:
                self.note("user-data is no #cloud-config: not run by the test guest")
            return None
        config = yaml.safe_load(raw)
        return config if isinstance(config, dict) else None

    def _start(self, units: list[str]) -> list[str]:
        failed = self.node.systemd.start_all(units)
        self._flush_notes()
        return failed

    # --- cloud-init ---------------------------------------------------------------------------
    def _cloud_init(self) -> None:
        if self.state["instance"] == self.spec["uuid"]:
            self._start(self.state["enabled"])  # what runcmd enabled, as multi-user.target
            return
        config = self.node.bundle.user_data
        status = 0
        if config:
            try:
                placed = place(self.node.bundle, self.node.root)
            except (OSError, ValueError, KeyError) as error:
                self.console.line(f"cloud-init: write_files failed: {error}")
                status, placed = 1, []
            mounted = MOUNTS + guestimage.MOUNTED
            for path in placed:
                if not any(path.startswith(m + "/") for m in mounted):
                    self.note(f"write_files: {path} is outside the guest's mounts: not visible")
            for command in config.get("runcmd") or []:
                status = self._runcmd(command)  # the script's status is its last command's
        self.state["instance"] = self.spec["uuid"]
        write(self.disk, STATE, self.state)
        if status != 0:
            self.console.line(
                f"util.py[WARNING]: Failed running /var/lib/cloud/instance/scripts/runcmd "
                f"[{status}]"
            )
            self.console.line(
                "cc_scripts_user.py[WARNING]: Failed to run module scripts-user (scripts in "
                "/var/lib/cloud/instance/scripts)"
            )

    def _runcmd(self, command) -> int:
        argv = command if isinstance(command, list) else shlex.split(str(command))
        argv = [str(word) for word in argv]
        self.note(f"runcmd: {shlex.join(argv)}")
        if argv and argv[0] in ("systemctl", "/usr/bin/systemctl", "/bin/systemctl"):
            return self._systemctl(argv[1:])
        self.console.line(
            f"bakery-guest: runcmd not run (the test guest runs systemctl only): {shlex.join(argv)}"
        )
        return 127

    def _systemctl(self, args: list[str]) -> int:
        flags = [a for a in args if a.startswith("-")]
        words = [a for a in args if not a.startswith("-")]
        if not words:
            return 1
        verb = words[0]
        units = [u if "." in u else f"{u}.service" for u in words[1:]]
        known = self.node.systemd.units
        missing = [u for u in units if u not in known]
        if missing:
            self.console.line(f"Failed to {verb} unit: Unit file {missing[0]} does not exist.")
            return 5
        enabled = self.state["enabled"]
        if verb in ("enable", "reenable"):
            enabled += [u for u in units if u not in enabled]
        elif verb == "disable":
            self.state["enabled"] = [u for u in enabled if u not in units]
        elif verb not in ("start", "stop", "restart"):
            self.console.line(f"Unknown command verb {verb}.")
            return 1
        write(self.disk, STATE, self.state)
        now = "--now" in flags
        if verb in ("stop", "restart") or (verb == "disable" and now):
            for unit in reversed(units):
                self.node.systemd.stop(unit)
        if verb in ("start", "restart") or (verb in ("enable", "reenable") and now):
            failed = self._start(units)
            for unit in failed:
                self.console.line(
                    f"Job for {unit} failed because the control process exited with error code."
                )
            return 1 if failed else 0
        return 0

    # --- running ------------------------------------------------------------------------------
    def watch(self) -> None:
        while not self.power_button.is_set():
            self.node.systemd.poll()
            self._flush_notes()
            if not owner_alive(self.spec):
                self.note("nova-compute is gone: power cut")
                raise SystemExit(1)
            self.power_button.wait(0.5)

    def reaper(self, sup: Supervisor) -> None:
        """Collect the orphans that ended, at each SIGCHLD (and every second). Left alone: the
        supervisor's own children (their Popen waits for them) and this process's short
        commands (`ip`, `mount`: same session as this process, waited by subprocess.run)."""
        me, session = os.getpid(), os.getsid(0)
        while True:
            self.child_exited.wait(1.0)
            self.child_exited.clear()
            with sup.lock:
                own = {p.pid for p in sup.procs if p.popen.returncode is None}
                for entry in os.listdir("/proc"):
                    if not entry.isdigit() or int(entry) in own:
                        continue
                    try:
                        stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    if stat[0] == "Z" and int(stat[1]) == me and int(stat[3]) != session:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(int(entry), os.WNOHANG)

    def _flush_notes(self) -> None:
        if self.node is None or self.node.systemd is None:
            return
        notes = self.node.systemd.notes
        for text in notes[self._noted :]:
            self.note(text)
        self._noted = len(notes)

    def shutdown(self) -> None:
        """ACPI: units in reverse start order, then systemd-shutdown's final kill."""
        self.note("ACPI power button: shutting down")
        self.node.systemd.stop_all()
        self._flush_notes()
        left = [(pid, start_time(pid)) for pid in self.node.processes()]
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        wait_gone(left, SHUTDOWN_GRACE)
        self.console.line("reboot: Power down")

    def power_off(self) -> None:
        """The end of every run: nothing of the guest is left but its disk."""
        problems = remove(self.netns)
        if self.node is not None:
            self.node.sup.reap()
        (self.disk / RUN).unlink(missing_ok=True)
        self.note(f"powered off{'; ' + '; '.join(problems) if problems else ''}")


def run_vm(disk: Path) -> int:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    vm = VM(disk)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: vm.power_button.set())
    signal.signal(signal.SIGCHLD, lambda *_: vm.child_exited.set())
    code = 0
    try:
        vm.boot()
        vm.watch()
        vm.shutdown()
    except SystemExit as stop:
        code = int(stop.code or 0)
    except Exception as error:  # noqa: BLE001 - a VM that cannot boot powers off
        vm.note(traceback.format_exc())
        vm.console.line(f"bakery-guest: boot failed: {error}")
        code = 1
    finally:
        vm.power_off()
    return code
