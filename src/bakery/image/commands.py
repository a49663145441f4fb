"""Run one command of a local build to its end, whatever that end is.

The command runs in a process group of its own. Its output (stdout and stderr together) is
read line by line on a thread, so the timeout holds even for a command that prints nothing.
However it ends (done, failed, timed out, Ctrl-C or SIGTERM in the caller), the whole group is
sent SIGTERM and, after a grace period, SIGKILL: nothing it started outlives it. Every failure
(could not start, non-zero exit, timeout) is a CommandError naming the command, how it ended,
its last lines of output and where the full log is.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Protocol

from ..errors import BuildError

TAIL_LINES = 15
TERM_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 10.0  # seconds for SIGKILL to take effect (only uninterruptible sleep resists it)
READER_GRACE = 5.0  # seconds for the output pipe to reach its end once the group is gone
SHOWN_CHARS = 200  # of a command in an error message; the log has it whole


class CommandError(BuildError):
    """A command could not start, exited non-zero or timed out."""

    def __init__(
        self,
        command: Sequence[str],
        problem: str,
        output: Sequence[str] | None,
        log_path: Path | None,
        returncode: int | None = None,
        timed_out: bool = False,
    ):
        self.command = list(command)
        self.problem = problem
        self.tail = [line.rstrip("\n") for line in (output or [])[-TAIL_LINES:]]
        self.log_path = log_path
        self.returncode = returncode
        self.timed_out = timed_out
        lines = [f"{shown(self.command)}: {problem}"]
        if self.tail:
            lines += ["last lines:", *(f"  {line}" for line in self.tail)]
        elif output is not None:  # it ran
            lines.append("(no output)")
        if log_path is not None:
            lines.append(f"full log: {log_path}")
        super().__init__("\n".join(lines))


class RunCommand(Protocol):
    """What helpers that run commands take: `run_command`, or a builder's logging `run`."""

    def __call__(self, command: Sequence[str], *, timeout: float) -> str: ...


def run_command(
    command: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> str:
    """Run `command` and return its output; raise CommandError unless it exits 0 in time.

    `on_line` gets each line as it comes (to log and echo it); `log_path` is where it goes,
    for the error message. `stdin` is fed to the command; without it stdin is /dev/null, so a
    command that asks a question fails instead of waiting until its timeout."""
    argv = list(command)
    reader = _OutputReader(on_line)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            env=env,
        )
    except OSError as error:  # not found, not executable, …
        raise CommandError(argv, f"could not start: {error}", None, log_path) from None
    try:  # at once: from here on, every way out ends the group
        assert proc.stdout is not None
        reader.read(proc.stdout)
        if stdin is not None:
            assert proc.stdin is not None
            _feed(proc.stdin, stdin)
        exited = _wait_for_exit(proc.pid, timeout)
    finally:
        stuck = _end_group(proc)
        output = reader.collect()
    problems = []
    if not exited:
        problems.append(f"timed out after {timeout:g} s (process group killed)")
    elif proc.returncode != 0:
        problems.append(_describe_exit(proc.returncode))
    if stuck:
        problems.append(f"processes {stuck} of its group survived SIGKILL")
    if reader.failure is not None:
        problems.append(f"its output could not be logged: {reader.failure}")
    if problems:
        raise CommandError(
            argv,
            "; ".join(problems),
            output,
            log_path,
            returncode=proc.returncode,
            timed_out=not exited,
        )
    return "".join(output)


def shown(command: Sequence[str]) -> str:
    text = shlex.join(command)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 2] + " …"


def live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` still running (zombies only wait for their parent)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                # After the command name in parentheses: state, ppid, pgrp, …
                state, _ppid, pgrp = f.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


class _OutputReader(threading.Thread):
    """Collects a command's output and passes each line on, off the waiting thread."""

    def __init__(self, on_line: Callable[[str], None] | None):
        super().__init__(daemon=True)
        self._stream: IO[str] | None = None
        self._on_line = on_line
        self._lock = threading.Lock()
        self._abandoned = False
        self.lines: list[str] = []
        self.failure: Exception | None = None

    def read(self, stream: IO[str]) -> None:
        self._stream = stream
        self.start()

    def run(self) -> None:
        assert self._stream is not None
        # Read to the end even after a failure: a writer blocked on a full pipe never ends.
        with self._stream:
            for line in self._stream:
                self._take(line)

    def _take(self, line: str) -> None:
        with self._lock:
            if self._abandoned:
                return
            self.lines.append(line)
            if self._on_line is None or self.failure is not None:
                return
            try:
                self._on_line(line)
            except Exception as error:  # noqa: BLE001 - reported by run_command
                self.failure = error

    def collect(self) -> list[str]:
        """The lines read so far, once the pipe ended or READER_GRACE passed. A process that
        left the group (a daemon) may hold the pipe open: what it writes later is dropped."""
        if self.ident is not None:  # started
            self.join(READER_GRACE)
        with self._lock:
            self._abandoned = True
            return list(self.lines)


def _feed(pipe: IO[str], text: str) -> None:
    """Write `text` on a thread of its own: a command that does not read it cannot block us."""

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), pipe:
            pipe.write(text)

    threading.Thread(target=write, daemon=True).start()


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for `pid` to exit, without reaping it: while it is a zombie, its
    PID (the group's ID) cannot be reused, so signalling the group cannot hit a stranger."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.1)
    return True


def _end_group(proc: subprocess.Popen) -> list[int]:
    """SIGTERM the command's group, SIGKILL what is left after TERM_GRACE, reap the leader.

    Returns the processes that even SIGKILL did not end."""
    pgid = proc.pid  # start_new_session: the leader's PID is the group's ID
    try:
        _signal_group(pgid, signal.SIGTERM)
        if not _wait_until_gone(pgid, TERM_GRACE):
            _signal_group(pgid, signal.SIGKILL)
            _wait_until_gone(pgid, KILL_WAIT)
    except BaseException:
        _signal_group(pgid, signal.SIGKILL)  # interrupted again while waiting: no more grace
        raise
    finally:
        if _wait_for_exit(pgid, 0):
            proc.wait()  # reap the leader: only now may its PID be reused
    return live_members(pgid)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _wait_until_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while live_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"failed with exit {returncode}"
