"""Start processes inside a host's namespaces and end them by PID, whatever happened.

Every PID the harness starts is recorded with its start time, so a reused PID is never killed.
All of them run inside the run's namespaces: after a run killed before its teardown, the next
session's sweep (tests/owned_netns.py) ends them with their namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def boot_ticks() -> int:
    """Now, in the unit of start_time (clock ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    # A zombie has exited: only its parent's wait() is missing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int, started: int | None, sig: int = signal.SIGKILL) -> bool:
    if not alive(pid, started):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[tuple[int, int | None]], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid, st in pids if alive(pid, st)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    started: int | None
    log: Path
    copier: threading.Thread | None = None  # what copies its output when it is teed

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Supervisor:
    """Owns every process of one test run."""

    log_dir: Path
    procs: list[Started] = field(default_factory=list)
    # Held while a process is started and recorded: a reaper of orphans (a cloud guest's VM
    # process) takes it to tell the supervisor's children from adopted ones.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str = "/",
        tee: Callable[[bytes], None] | None = None,
    ) -> Started:
        """Start `argv`, its output into `<name>.log`; with `tee`, each line also goes there
        (a node's console)."""
        log = self.log_dir / f"{name}.log"
        with self.lock, open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if tee else out,
                stderr=subprocess.STDOUT,
                env=env if env is not None else minimal_env(),
                cwd=cwd,
                start_new_session=True,  # the test runner's Ctrl-C is the harness's to handle
            )
            copier = None
            if tee:
                copier = threading.Thread(target=_copy, args=(popen.stdout, log, tee), daemon=True)
                copier.start()
            proc = Started(name, popen, start_time(popen.pid), log, copier)
            self.procs.append(proc)
        return proc

    def stop(self, proc: Started, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        kill(proc.pid, proc.started, sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc.pid, proc.started, signal.SIGKILL)
            proc.popen.wait(5)

    def reap(self) -> None:
        for p in self.procs:
            if p.popen.returncode is None:
                p.popen.poll()

    def kill_all(self) -> list[int]:
        """SIGKILL every recorded process; returns those that did not go away."""
        pids = [(p.pid, p.started) for p in self.procs]
        for pid, st in pids:
            kill(pid, st)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(5)
        return wait_gone(pids, 5)


def _copy(stream, log: Path, tee: Callable[[bytes], None]) -> None:
    with stream, open(log, "ab") as out:
        for line in iter(stream.readline, b""):
            out.write(line)
            out.flush()
            tee(line)


def minimal_env(**extra: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    env.update(extra)
    return env
