"""A cloud-tier guest: a Nova server that runs for real, as a node runner process of its own.

The test virt driver (plugins/bakery_guest.py) is the hypervisor. For a server that is no
builder it makes the server's disk directory `<instances_path>/<uuid>/`, writes `guest.json`
and `user-data` into it, and starts the VM, `python -m tests.cloud.guest boot --disk DIR`
(guestboot.py), with the project's Python. Every other action goes through this module's
commands, which need nothing but the disk directory, so any process can run them:

    boot      the VM: its network, mounts, cloud-init and units, until it is powered off
    poweroff  ACPI: SIGTERM to the VM, which stops its units in reverse start order and ends;
              after --timeout seconds (or at once with --hard: a power cut) SIGKILL to the VM
              and everything in its namespace, and the namespace is deleted
    destroy   a hard power-off, then the disk directory is removed (what Nova's delete does:
              a real hypervisor does not shut a deleted server down cleanly either)

The disk directory:

    guest.json   what the driver knows: uuid, hostname, compute host, owner (nova-compute's
                 PID and start time), namespace name, the port (network, MAC, address,
                 gateway), the image with its properties
    user-data    the user-data, decoded (0600: a node's carries its secrets)
    root/        the node's own files, bind-mounted over the node paths inside the guest
    state.json   what survives a reboot: cloud-init done for this instance, units enabled
    console.log  the serial console; Nova's console-log API returns its tail
    journal/     each unit's output (its journal); runner.log is the VM process's own
    run.json     while it runs: the VM's and the namespace holder's PID and start time

Every namespace of a guest is `bkg-<nova-compute PID>-<6 hex>`, every disk directory names
that owner in guest.json: what a dead nova-compute left is swept at the next stack start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from processes import alive, kill, wait_gone

from tests.owned_netns import ns_inode, ns_path, pids_in_netns, remove

from .layout import Layout

GUEST = "guest.json"
RUN = "run.json"


def read(disk: Path, name: str) -> dict | None:
    try:
        return json.loads((disk / name).read_text())
    except (OSError, ValueError):
        return None


def write(disk: Path, name: str, data: dict) -> None:
    tmp = disk / f".{name}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.rename(disk / name)


def running(disk: Path) -> bool:
    """The VM process of this disk runs."""
    state = read(disk, RUN)
    return bool(state) and alive(state["runner"], state["runner_started"])


def hard_stop(disk: Path) -> list[str]:
    """A power cut: SIGKILL to the VM and to everything in its namespace, which is deleted
    (its mount namespace ends with its last process). Returns what could not be done."""
    spec, state = read(disk, GUEST) or {}, read(disk, RUN) or {}
    if state:
        kill(state["runner"], state["runner_started"])
        wait_gone([(state["runner"], state["runner_started"])], 10)
    problems = remove(spec["netns"]) if spec.get("netns") else []
    (disk / RUN).unlink(missing_ok=True)
    return problems


def poweroff(disk: Path, timeout: float, hard: bool = False) -> list[str]:
    """ACPI shutdown, and a power cut if the guest is still on after `timeout` seconds."""
    state = read(disk, RUN)
    if state and not hard and timeout > 0:
        kill(state["runner"], state["runner_started"], signal.SIGTERM)
        wait_gone([(state["runner"], state["runner_started"])], timeout)
    return hard_stop(disk)


def destroy(disk: Path) -> list[str]:
    problems = hard_stop(disk)
    shutil.rmtree(disk, ignore_errors=True)
    if disk.exists():
        problems.append(f"{disk} could not be removed")
    return problems


def disks(layout: Layout) -> list[Path]:
    """Every guest disk directory of the stack (on any compute host)."""
    return sorted(p.parent for p in (layout.data / "nova").glob(f"*/instances/*/{GUEST}"))


def owner_alive(spec: dict) -> bool:
    return alive(spec["owner"], spec.get("owner_started"))


def sweep(layout: Layout) -> list[str]:
    """Destroy the guests whose nova-compute is gone (a crash, a stack killed before its
    stop); say what was removed."""
    done = []
    for disk in disks(layout):
        spec = read(disk, GUEST) or {}
        if spec.get("owner") and owner_alive(spec):
            continue
        problems = destroy(disk)
        done.append(f"guest {disk.name} (owner {spec.get('owner')} gone): removed{problems or ''}")
    return done


def leftovers(layout: Layout) -> list[str]:
    """What of any guest of the stack still exists: disk directories, VM processes."""
    found = [f"guest disk {disk}" for disk in disks(layout)]
    marker = f"--disk {layout.data}".encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"VM process {pid}: {cmdline[:100]!r}")
    return found


def journal(disk: Path, unit: str) -> str:
    """What the guest's unit (its stem: `patroni`) has written to its journal; `runner`: the
    VM process's own log."""
    hostname = (read(disk, GUEST) or {}).get("hostname")
    name = "runner.log" if unit == "runner" else f"{hostname}-{unit}.log"
    path = disk / "journal" / name
    return path.read_text(errors="replace") if path.exists() else ""


def processes(disk: Path) -> list[int]:
    """What runs of the guest: its VM process and everything in its namespace."""
    spec, state = read(disk, GUEST) or {}, read(disk, RUN) or {}
    found = []
    if state and alive(state["runner"], state["runner_started"]):
        found.append(state["runner"])
    inode = ns_inode(ns_path(spec["netns"])) if spec.get("netns") else None
    return found + (pids_in_netns(inode) if inode else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("boot", "poweroff", "destroy"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--disk", type=Path, required=True)
        if name == "poweroff":
            cmd.add_argument("--timeout", type=float, default=60)
            cmd.add_argument("--hard", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "boot":
        from .guestboot import run_vm  # the VM needs the node machinery; the others do not

        return run_vm(args.disk)
    if args.command == "poweroff":
        problems = poweroff(args.disk, args.timeout, args.hard)
    else:
        problems = destroy(args.disk)
    for problem in problems:
        print(f"guest {args.disk.name}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
