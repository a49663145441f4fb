"""Boot machinery of the image tier: a private network namespace with a bridge, etcd on it,
QEMU (TCG) on a tap device, a NoCloud seed, and the QEMU guest agent to look inside the guest.

Everything created is recorded and removed by `close()`, also on failure: QEMU and etcd are
killed by PID, then anything else left in the namespace, and the namespace (with its bridge and
tap) deleted. Its name carries the owning process's PID, so a later session sweeps it if this
one is killed before `close()` (tests/owned_netns.py). Traffic stays inside the
namespace: the guest, etcd and the test's curl calls all live on its bridge.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import owned_netns
from tests.sigterm import teardown_first

# Figures for the terminal summary and build/image-test/bench.json (filled by the tests).
FIGURES: dict[str, object] = {}
BUILD_ROOT = Path(
    os.environ.get(
        "BAKERY_IMAGE_BUILD_DIR", Path(__file__).resolve().parents[2] / "build" / "image-test"
    )
)

NETWORK = "10.213.7.0/24"
HOST_ADDRESS = "10.213.7.1"  # the bridge: etcd listens here
GUEST_ADDRESS = "10.213.7.10"
PREFIX = 24
# QEMU's first virtio-net device on the `pc` machine at PCI slot 3: systemd names it ens3.
GUEST_NIC = "ens3"


def run(command: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=check)


class GuestAgent:
    """A minimal QEMU guest agent client over the virtio-serial socket."""

    def __init__(self, path: Path):
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""
        self._id = 0

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.close()
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(5)
                self.sock.connect(str(self.path))
                self._sync()
                return
            except (OSError, TimeoutError, ValueError) as error:
                last_error = error
                time.sleep(2)
        raise TimeoutError(f"guest agent did not answer within {timeout} s: {last_error}")

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.buffer = b""

    def _sync(self) -> None:
        self._id += 1
        token = 424200 + self._id
        # A 0xFF byte resets the agent's parser; then skip anything stale until our id.
        assert self.sock is not None
        self.sock.sendall(b"\xff")
        self.sock.sendall(
            json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode()
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = self._line()
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            with contextlib.suppress(ValueError):
                if json.loads(line).get("return") == token:
                    return
        raise TimeoutError("guest-sync got no answer")

    def _line(self) -> bytes:
        assert self.sock is not None
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("guest agent closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def call(self, command: str, arguments: dict | None = None) -> object:
        message = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        assert self.sock is not None
        self.sock.sendall(json.dumps(message).encode())
        reply = json.loads(self._line())
        if "error" in reply:
            raise RuntimeError(f"guest agent {command}: {reply['error']}")
        return reply["return"]

    def exec(self, argv: list[str], timeout: float = 60) -> tuple[int, str, str]:
        """Run a command in the guest as root; return (exit code, stdout, stderr)."""
        pid = self.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})[
            "pid"
        ]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", {"pid": pid})
            if status["exited"]:
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                return status.get("exitcode", -1), out, err
            time.sleep(0.2)
        raise TimeoutError(f"guest command {argv} did not finish within {timeout} s")

    def sh(self, script: str, timeout: float = 60) -> str:
        """Run a shell script in the guest; fail on a non-zero exit."""
        code, out, err = self.exec(["/bin/sh", "-c", script], timeout)
        if code != 0:
            raise AssertionError(f"guest: `{script}` exited {code}: {err.strip() or out.strip()}")
        return out


@dataclass
class Guest:
    """A booted image: its console log, its agent and when things happened."""

    workdir: Path
    netns: str
    console: Path
    agent: GuestAgent
    started: float
    qemu_pid: int | None = None
    etcd_pid: int | None = None
    marks: dict[str, float] = field(default_factory=dict)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_console(self, needle: str, timeout: float) -> float:
        """Seconds from QEMU's start until `needle` shows on the console."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.console_text():
                return time.monotonic() - self.started
            self._check_alive()
            time.sleep(0.5)
        raise TimeoutError(f"'{needle}' not on the console within {timeout} s; see {self.console}")

    def wait_exit(self, timeout: float, fail_on: str | None = None) -> float:
        """Seconds from QEMU's start until it exits (the guest powered off: -no-reboot).
        `fail_on`: console text that shows it will not (checked after a grace of 60 s)."""
        deadline = time.monotonic() + timeout
        seen: float | None = None
        while time.monotonic() < deadline:
            if fail_on and seen is None and fail_on in self.console_text():
                seen = time.monotonic()
            if seen is not None and time.monotonic() - seen > 60:
                raise AssertionError(f"'{fail_on}' on the console, still running; {self.console}")
            assert self.qemu_pid is not None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.qemu_pid, os.WNOHANG)
            try:
                os.kill(self.qemu_pid, 0)
            except ProcessLookupError:
                self.qemu_pid = None
                return time.monotonic() - self.started
            time.sleep(0.5)
        raise TimeoutError(f"the guest did not power off within {timeout} s; see {self.console}")

    def _check_alive(self) -> None:
        if self.qemu_pid is not None:
            try:
                os.kill(self.qemu_pid, 0)
            except ProcessLookupError:
                raise AssertionError(f"QEMU exited; console: {self.console}") from None

    def in_netns(self, command: list[str], timeout: float = 30, check: bool = False):
        return run(["ip", "netns", "exec", self.netns, *command], timeout=timeout, check=check)

    def close(self) -> list[str]:
        """Stop everything this guest started; return what could not be removed."""
        problems = []
        self.agent.close()
        for name in ("qemu_pid", "etcd_pid"):
            pid = getattr(self, name)
            if pid is None:
                continue
            try:
                _kill_pid(pid)
            except Exception as error:  # noqa: BLE001 - report, go on
                problems.append(f"{name} {pid}: {error}")
            setattr(self, name, None)
        # The tap and the bridge go with the namespace (checked: none is left on the host).
        problems += owned_netns.remove(self.netns)
        return problems


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it is our child.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def network_config() -> str:
    """NoCloud network-config v2: the address the rendered config names, no MAC matching
    (a MAC that does not exist makes cloud-init-local apply no network at all)."""
    return (
        "version: 2\n"
        "ethernets:\n"
        f"  {GUEST_NIC}:\n"
        f"    addresses: [{GUEST_ADDRESS}/{PREFIX}]\n"
        "    dhcp4: false\n"
        "    dhcp6: false\n"
    )


def make_seed(workdir: Path, user_data: Path, instance_id: str) -> Path:
    meta = workdir / "meta-data"
    meta.write_text(f"instance-id: {instance_id}\nlocal-hostname: {instance_id}\n")
    net = workdir / "network-config"
    net.write_text(network_config())
    seed = workdir / "seed.iso"
    run(["cloud-localds", "-N", str(net), str(seed), str(user_data), str(meta)], timeout=60)
    return seed


def boot(
    image: Path,
    user_data: Path,
    workdir: Path,
    instance_id: str,
    memory_mb: int = 2048,
    with_etcd: bool = True,
    keep_writes: bool = False,
) -> Guest:
    """Start etcd and the guest inside a new network namespace. Call `close()` afterwards.

    The guest's writes are discarded, unless `keep_writes` (then `image` should be an overlay
    of the built image, which the test inspects afterwards)."""
    workdir.mkdir(parents=True, exist_ok=True)
    netns = owned_netns.owned_name("img")
    console = workdir / "console.log"
    console.unlink(missing_ok=True)
    agent_path = workdir / "qga.sock"
    agent_path.unlink(missing_ok=True)
    guest = Guest(workdir, netns, console, GuestAgent(agent_path), time.monotonic())
    try:
        seed = make_seed(workdir, user_data, instance_id)
        run(["ip", "netns", "add", netns])
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "br0", "type", "bridge"],
            ["ip", "addr", "add", f"{HOST_ADDRESS}/{PREFIX}", "dev", "br0"],
            ["ip", "link", "set", "br0", "up"],
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "link", "set", "tap0", "master", "br0"],
            ["ip", "link", "set", "tap0", "up"],
        ):
            run(["ip", "netns", "exec", netns, *command])
        if with_etcd:
            guest.etcd_pid = _start_etcd(netns, workdir)
        snapshot = "off" if keep_writes else "on"
        qemu = [
            "qemu-system-x86_64",
            "-machine", "pc",
            "-accel", "tcg,thread=multi,tb-size=256",
            "-smp", "2",
            "-m", str(memory_mb),
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{console}",
            "-no-reboot",
            "-drive", f"file={image},if=virtio,format=qcow2,snapshot={snapshot}",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            # romfile= : no iPXE option ROM needed (and ipxe-qemu need not be installed).
            "-device", "virtio-net-pci,netdev=n0,addr=0x3,romfile=",
            "-chardev", f"socket,path={agent_path},server=on,wait=off,id=qga0",
            "-device", "virtio-serial",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-object", "rng-random,filename=/dev/urandom,id=rng0",
            "-device", "virtio-rng-pci,rng=rng0",
        ]  # fmt: skip
        log = open(workdir / "qemu.log", "w")  # noqa: SIM115 - lives as long as QEMU
        guest.started = time.monotonic()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *qemu],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        guest.qemu_pid = proc.pid
        time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU failed to start: {(workdir / 'qemu.log').read_text()}")
        return guest
    except BaseException:
        with teardown_first():
            guest.close()
        raise


def _start_etcd(netns: str, workdir: Path) -> int:
    data = workdir / "etcd"
    shutil.rmtree(data, ignore_errors=True)
    client = f"http://{HOST_ADDRESS}:2379"
    log = open(workdir / "etcd.log", "w")  # noqa: SIM115 - lives as long as etcd
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "etcd",
            "--name",
            "image-test",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "image-test=http://127.0.0.1:2380",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = run(
            ["ip", "netns", "exec", netns, "curl", "-s", "-m", "2", f"{client}/health"],
            check=False,
        )
        if '"health":"true"' in probe.stdout:
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    _kill_pid(proc.pid)
    raise RuntimeError(f"etcd did not become healthy: {(workdir / 'etcd.log').read_text()[-2000:]}")
