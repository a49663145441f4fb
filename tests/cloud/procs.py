"""Start the stack's long-running processes, remember them by PID, and stop them by PID.

Each process starts in its own session (setsid). pids/<name>.pid records the PID and its start
time (so a reused PID is never killed); stopping signals every process whose session is one of
ours, which also reaches children such as RabbitMQ's Erlang helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from .layout import PORTS, Layout

PR_SET_CHILD_SUBREAPER = 36  # prctl(2)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces: the fields after it are split from the last ')'.
    head, _, tail = raw.rpartition(")")
    return [head] + tail.split()


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[20] if fields else None  # field 22 (starttime) of proc(5)


def _session(pid: int) -> int | None:
    fields = _stat(pid)
    if not fields or fields[1] == "Z":
        return None
    return int(fields[4])  # field 6 (session) of proc(5)


class Supervisor:
    def __init__(self, layout: Layout):
        self.layout = layout

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        _become_subreaper()
        self.layout.pids.mkdir(parents=True, exist_ok=True)
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with open(self.layout.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.layout.root,
            )
        (self.layout.pids / f"{name}.pid").write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        return proc.pid

    def _pidfiles(self) -> dict[str, int]:
        """name -> PID of each recorded process that is still (or, as a zombie, was) ours."""
        found = {}
        for path in sorted(self.layout.pids.glob("*.pid")) if self.layout.pids.exists() else ():
            pid_text, _, started = path.read_text().strip().partition(" ")
            if _start_time(int(pid_text)) == started:
                found[path.stem] = int(pid_text)
        return found

    def recorded(self) -> dict[str, int]:
        """name -> PID of the recorded processes that still run."""
        return {name: pid for name, pid in self._pidfiles().items() if _session(pid) is not None}

    def _tree(self, sessions: set[int] | None = None) -> dict[int, list[str]]:
        """pid -> stat fields of the processes in our sessions and all their descendants (some,
        like Erlang's erl_child_setup, start sessions of their own), zombies included."""
        if sessions is None:
            sessions = set(self._pidfiles().values())
        procs = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (fields := _stat(int(entry.name))):
                procs[int(entry.name)] = fields
        tree = {pid for pid, fields in procs.items() if int(fields[4]) in sessions}
        grew = True
        while grew:
            children = {pid for pid, fields in procs.items() if int(fields[2]) in tree} - tree
            tree |= children
            grew = bool(children)
        return {pid: procs[pid] for pid in tree}

    def members(self, sessions: set[int] | None = None) -> list[int]:
        """Every live process of the stack, also when the process that started its session has
        already died."""
        return sorted(pid for pid, fields in self._tree(sessions).items() if fields[1] != "Z")

    def exited(self) -> list[str]:
        """Names of recorded processes that are no longer running."""
        alive = self.recorded()
        return [p.stem for p in sorted(self.layout.pids.glob("*.pid")) if p.stem not in alive]

    def stop(self, last: tuple[str, ...] = (), grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; the processes named in `last` (the
        message broker) are stopped after the others, so these do not retry against it."""
        recorded = self._pidfiles()
        seen = set(self._tree())
        first = [pid for name, pid in recorded.items() if name not in last]
        self._stop_sessions(set(first), grace)
        self._stop_sessions(set(recorded.values()), grace)
        _reap(seen | set(self._tree()))
        if not self.members():
            for path in self.layout.pids.glob("*.pid") if self.layout.pids.exists() else ():
                path.unlink()

    def _stop_sessions(self, sessions: set[int], grace: float) -> None:
        def alive() -> list[int]:
            return self.members(sessions)

        for pid in alive():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive():
            time.sleep(0.2)
        for pid in alive():
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and alive():
            time.sleep(0.1)

    def leftovers(self) -> dict[str, list]:
        """What would show that the stack still runs: our processes and listening ports."""
        return {"processes": self.members(), "ports": listening_ports()}


def _become_subreaper() -> None:
    """Orphans of our processes (e.g. RabbitMQ's helpers) become our children instead of init's:
    the init process of these machines does not reap them, and zombies would stay in `ps`.
    Like init, this process then reaps them while the stack runs: a guest's power cut orphans
    its processes, and a zombie postmaster would look alive to the next boot's Patroni."""
    global _REAPING
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if not _REAPING:
        _REAPING = True
        threading.Thread(target=_reap_orphans, daemon=True, name="orphan-reaper").start()


_REAPING = False


def _reap_orphans() -> None:
    """Every second: collect our zombie children that run in a session other than ours. Those
    in ours are commands this process waits for itself (subprocess.run); the stack's processes
    and what they orphan each have sessions of their own."""
    me, session = os.getpid(), os.getsid(0)
    while True:
        time.sleep(1)
        for entry in Path("/proc").iterdir():
            fields = _stat(int(entry.name)) if entry.name.isdigit() else None
            if fields and fields[1] == "Z" and int(fields[2]) == me and int(fields[4]) != session:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)


def _reap(pids: set[int]) -> None:
    """Collect the exit status of those of `pids` that are dead and our (adopted) children."""
    for pid in pids:
        fields = _stat(pid)
        if fields and fields[1] == "Z" and int(fields[2]) == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def listening_ports() -> list[int]:
    """The stack's ports that something listens on (any process, any address)."""
    ours = set(PORTS.values())
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "0A" and port in ours:  # 0A: TCP_LISTEN
                found.add(port)
    return sorted(found)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total
