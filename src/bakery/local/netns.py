"""Network namespaces: create, run commands inside, and remove together with whatever runs in
them. Every address of the local target lives inside namespaces like these, never on the host.

Removing a namespace kills every process whose network namespace it is (QEMU, etcd, Nebula and
anything they started), then deletes it, which takes its bridges, veths and taps with it. The
test harnesses use the same primitives (tests/owned_netns.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator

from ..errors import BakeryError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


class NetnsError(BakeryError):
    """An `ip` command failed; the message holds the command and its error output."""


def ns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def exists(name: str) -> bool:
    return ns_inode(ns_path(name)) is not None


def names() -> list[str]:
    """Every named network namespace on the machine."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def pids_in_netns(inode: int) -> list[int]:
    """Every process whose network namespace is `inode` (postgres children included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
        except OSError:
            continue  # exited meanwhile; an exited (zombie) process has no namespace either
    return found


def kill_processes_in(inode: int, timeout: float = 10, spare: tuple[int, ...] = ()) -> list[int]:
    """SIGKILL every process in the namespace but `spare`, again until none is left (one may
    fork between the scan and the kill); returns those still there at the deadline."""
    deadline = time.monotonic() + timeout
    while pids := [pid for pid in pids_in_netns(inode) if pid not in spare]:
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return []


def remove(name: str) -> list[str]:
    """Kill what runs in namespace `name`, then delete it; returns what could not be done.
    A name that does not exist (never created, or already gone) is fine."""
    inode = ns_inode(ns_path(name))
    if inode is None:
        return []
    problems = [f"process {pid} in {name} survived SIGKILL" for pid in kill_processes_in(inode)]
    res = subprocess.run(
        ["ip", "netns", "delete", name],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode != 0 and exists(name):
        problems.append(f"ip netns delete {name}: {res.stderr.strip()}")
    return problems


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace `name`: sockets made inside stay there."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(ns_path(name), os.O_RDONLY)
    except OSError:
        os.close(own)
        raise
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        back = libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)
        if back != 0:
            raise OSError(ctypes.get_errno(), "setns back to the thread's own namespace")


def stop_process(pid: int, timeout: float = 10) -> None:
    """SIGTERM a process started in a namespace, SIGKILL it after `timeout`; reap it if it is
    our child (a VM's disk or etcd's data of a failed launch is thrown away anyway)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def ip(*args: str, netns: str | None = None, timeout: float = 30) -> str:
    """Run `ip ARGS` (inside `netns` when given); raise NetnsError with its message on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return _run(argv, timeout)


def run_in(netns: str, argv: list[str], timeout: float = 30, stdin: str | None = None) -> str:
    """Run a command inside `netns`; raise NetnsError on failure."""
    return _run(["ip", "netns", "exec", netns, *argv], timeout, stdin)


def _run(argv: list[str], timeout: float, stdin: str | None = None) -> str:
    try:
        res = subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(argv)}` did not finish within {timeout} s") from None
    except OSError as error:
        raise NetnsError(f"`{argv[0]}`: {error}") from None
    if res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise NetnsError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else res.returncode}")
    return res.stdout
