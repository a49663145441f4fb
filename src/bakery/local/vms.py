"""The local target's VMs: one QEMU per node on a qcow2 overlay of the baked image, its
user-data on a NoCloud seed, its NIC a tap on its AZ's segment, its serial console a file.

The console file is the node's console log (what Nova's console log is in a cloud): the
cluster's health is read from it. Each VM also has a QEMU guest agent socket beside it, for
looking inside without SSH when the image carries the agent (local-test does).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..cleanup import Cleanup
from ..errors import BakeryError
from ..files import write_file, write_private
from . import netns

# QEMU's first virtio-net device on the `pc` machine at PCI slot 3: systemd names it ens3.
GUEST_NIC = "ens3"


class VmError(BakeryError):
    """A VM could not be prepared or started; the message names the file to look at."""


@dataclass(frozen=True)
class VmSpec:
    """One node's VM."""

    node: str
    az: str
    netns_role: str  # its AZ's namespace role
    tap: str
    address: ipaddress.IPv4Interface  # on its AZ's segment
    gateway: ipaddress.IPv4Address
    memory_mb: int
    cpus: int

    @property
    def mac(self) -> str:
        """Stable and distinct per node (QEMU would give every VM the same one)."""
        digest = hashlib.sha256(self.node.encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


@dataclass(frozen=True)
class VmFiles:
    """Where a VM's files live: <run dir>/<node>/."""

    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.dir / "seed.iso"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def agent(self) -> Path:
        return self.dir / "qga.sock"


def accel_choice(wanted: str) -> tuple[str, str]:
    """('kvm' or 'tcg', why). KVM needs /dev/kvm and hardware virtualization in the CPU: a
    paravirtual /dev/kvm without vmx/svm cannot run a stock kernel."""
    usable, why = kvm_usable()
    if wanted == "tcg":
        return "tcg", "local.accel is tcg"
    if wanted == "kvm":
        if not usable:
            raise VmError(f"bakery.local.accel: 'kvm', but {why}; use 'auto' or 'tcg'")
        return "kvm", "local.accel is kvm"
    return ("kvm", why) if usable else ("tcg", f"{why}: software emulation, slow")


def kvm_usable() -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    words = set(flags.split())
    if not words & {"vmx", "svm"}:
        return False, "the CPU shows no vmx/svm (a paravirtual /dev/kvm)"
    return True, "/dev/kvm with hardware virtualization"


def network_config(spec: VmSpec) -> str:
    """NoCloud network-config v2: the node's address and its AZ's router as default route. The
    NIC is named, not matched by MAC (a MAC that does not match makes cloud-init apply no
    network at all)."""
    return (
        "version: 2\n"
        "ethernets:\n"
        f"  {GUEST_NIC}:\n"
        f"    addresses: [{spec.address}]\n"
        f"    routes: [{{to: 0.0.0.0/0, via: {spec.gateway}}}]\n"
        "    dhcp4: false\n"
        "    dhcp6: false\n"
    )


def prepare(
    spec: VmSpec, files: VmFiles, base: Path, user_data: str, instance_id: str, cleanup: Cleanup
) -> None:
    """The VM's disk (an overlay of `base`) and its NoCloud seed; both registered for removal."""
    files.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cleanup.push(f"disk {files.disk}", lambda: files.disk.unlink(missing_ok=True))
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.resolve()),
          str(files.disk)], "qemu-img create")  # fmt: skip
    staged = [files.dir / "user-data", files.dir / "meta-data", files.dir / "network-config"]
    for path in (files.seed, *staged):
        cleanup.push(f"seed file {path}", lambda path=path: path.unlink(missing_ok=True))
    # The user-data holds the node's secrets (patroni.env): 0600, like the seed made from it.
    write_private(staged[0], user_data)
    write_file(staged[1], f"instance-id: {instance_id}\nlocal-hostname: {spec.node}\n", 0o600)
    write_file(staged[2], network_config(spec), 0o600)
    _run(["cloud-localds", "-N", str(staged[2]), str(files.seed), str(staged[0]), str(staged[1])],
         "cloud-localds")  # fmt: skip
    files.seed.chmod(0o600)


def qemu_argv(spec: VmSpec, files: VmFiles, accel: str) -> list[str]:
    accelerator = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else [
        # Every CPU feature TCG emulates: with AES-NI and PCLMULQDQ, Nebula's AES-GCM runs as
        # emulated instructions instead of Go's software AES (a base backup through the overlay).
        "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max",
    ]  # fmt: skip
    return [
        "qemu-system-x86_64",
        "-name", f"{spec.node},process=bakery-{spec.node}",
        "-machine", "pc",
        *accelerator,
        "-smp", str(spec.cpus),
        "-m", str(spec.memory_mb),
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{files.console.resolve()}",
        "-pidfile", str(files.pidfile.resolve()),
        "-drive", f"file={files.disk.resolve()},if=virtio,format=qcow2",
        "-drive", f"file={files.seed.resolve()},if=virtio,format=raw,readonly=on",
        "-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no",
        # romfile= : no iPXE option ROM needed (and ipxe-qemu need not be installed).
        "-device", f"virtio-net-pci,netdev=n0,addr=0x3,romfile=,mac={spec.mac}",
        "-chardev", f"socket,path={files.agent.resolve()},server=on,wait=off,id=qga0",
        "-device", "virtio-serial",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-object", "rng-random,filename=/dev/urandom,id=rng0",
        "-device", "virtio-rng-pci,rng=rng0",
    ]  # fmt: skip


def start(spec: VmSpec, files: VmFiles, ns: str, accel: str, cleanup: Cleanup) -> int:
    """Start QEMU inside the AZ's namespace, detached; its PID once it has written it."""
    for stale in (files.console, files.pidfile, files.agent):
        stale.unlink(missing_ok=True)
    with open(files.qemu_log, "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *qemu_argv(spec, files, accel)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cleanup.push(f"VM {spec.node} (QEMU PID {proc.pid})", lambda: netns.stop_process(proc.pid))
    deadline = time.monotonic() + 30
    while (pid := running_pid(files, ns)) is None:
        if proc.poll() is not None:
            tail = files.qemu_log.read_text(errors="replace").strip().splitlines()[-3:]
            raise VmError(f"VM {spec.node}: QEMU exited at start: {' | '.join(tail)}")
        if time.monotonic() > deadline:
            raise VmError(f"VM {spec.node}: QEMU wrote no PID within 30 s; see {files.qemu_log}")
        time.sleep(0.1)
    return pid


def running_pid(files: VmFiles, ns: str) -> int | None:
    """QEMU's PID if it runs, in the namespace it was started in."""
    try:
        pid = int(files.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    inode = netns.ns_inode(netns.ns_path(ns))
    try:
        alive = inode is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == inode
    except OSError:
        return None
    return pid if alive else None


def _run(argv: list[str], what: str) -> None:
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise VmError(f"{what}: {error}") from None
    if res.returncode != 0:
        raise VmError(f"{what} failed: {(res.stderr or res.stdout).strip()}")
