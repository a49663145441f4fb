"""Who owns a local cluster: its keeper, a small process that lives as long as the cluster.

A local cluster outlives the `invoke launch` that made it, so its owner cannot be that process.
The launch starts a keeper first; every namespace of the run is named after it,
`bakery-<keeper pid>-<6 hex>-<role>`, so nothing of the run ever exists without an owner in
its name. The keeper

- tears the run down if the launch ends without handing the cluster over (the launch was
  killed, even with SIGKILL: the keeper sees its pipe close);
- once handed over, waits for SIGTERM (`invoke destroy --target local`), then tears down:
  every process in the run's namespaces is killed and the namespaces deleted (their bridges,
  veths and taps go with them).

A namespace whose keeper is gone (killed, a crash, a reboot) is stale: the next local launch
or destroy on this machine removes it, whatever configuration it belonged to, and says so. A
keeper is recognised by its command line (module and token), so a reused PID is not mistaken
for one. Names of any other form are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import netns

PREFIX = "bakery"
RUN_NAME = re.compile(rf"{PREFIX}-(?P<owner>\d+)-(?P<token>[0-9a-f]{{6}})")
# A namespace of a run: the run's name, then its role (ext, az-<label>).
OWNED_NETNS = re.compile(rf"(?P<run>{RUN_NAME.pattern})-(?P<role>[a-z0-9-]+)")
MODULE = "bakery.local.owner"
ADOPT = b"adopt\n"


def run_name(owner_pid: int, token: str) -> str:
    return f"{PREFIX}-{owner_pid}-{token}"


def keeper_alive(run: str) -> bool:
    """Whether the keeper named in `run` still runs (checked by its command line)."""
    match = RUN_NAME.fullmatch(run)
    if match is None:
        return False
    try:
        argv = Path(f"/proc/{match['owner']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in argv and match["token"].encode() in argv


def namespaces_of(run: str) -> list[str]:
    return [
        name
        for name in netns.names()
        if (m := OWNED_NETNS.fullmatch(name)) is not None and m["run"] == run
    ]


def sweep_stale() -> list[str]:
    """Remove the namespaces (and what runs in them) of local runs whose keeper is gone; one
    line per namespace removed."""
    done = []
    for name in netns.names():
        match = OWNED_NETNS.fullmatch(name)
        if match is None or keeper_alive(match["run"]):
            continue
        inode = netns.ns_inode(netns.ns_path(name))
        count = len(netns.pids_in_netns(inode)) if inode is not None else 0
        problems = netns.remove(name)
        done.append(
            f"{name} (keeper {match['owner']} gone): {count} process(es) killed, "
            + ("; ".join(problems) if problems else "namespace deleted")
        )
    return done


# -- the launch's side ------------------------------------------------------------------------


class Keeper:
    """The launch's handle on the keeper it started."""

    def __init__(self, log: Path):
        self.token = secrets.token_hex(3)
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(log, "ab") as out:
            # Its own session: Ctrl-C at the terminal reaches the launch, which cleans up, not
            # the keeper. Only the pipe is inherited: when the launch dies, the keeper sees EOF.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--token", self.token],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.run = run_name(self.proc.pid, self.token)

    def adopt(self) -> None:
        """Hand the cluster over: from now on it lives until `destroy` stops the keeper."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(ADOPT)
        self.proc.stdin.close()


def stop_keeper(run: str, timeout: float = 120) -> bool:
    """SIGTERM the keeper of `run` and wait until it has torn down and exited; True if it was
    running. SIGKILL after `timeout` (its namespaces are then removed by the caller)."""
    match = RUN_NAME.fullmatch(run)
    if match is None or not keeper_alive(run):
        return False
    pid = int(match["owner"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while keeper_alive(run):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child when the launch stops it
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


# -- the keeper -------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop(signum, frame):  # noqa: ARG001
    raise _Stop(signal.Signals(signum).name)


def teardown(run: str) -> list[str]:
    """Kill every process in the run's namespaces and delete them; what could not be done."""
    problems = []
    for name in namespaces_of(run):
        problems += netns.remove(name)
    return problems


def keep(token: str) -> int:
    run = run_name(os.getpid(), token)

    def say(text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(f"{stamp} keeper of {run}: {text}", flush=True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    say("started")
    try:
        if sys.stdin.buffer.readline() != ADOPT:
            say("the launch ended without handing the cluster over")
            raise _Stop("launch gone")
        say("cluster handed over; running until `invoke destroy --target local`")
        while True:
            signal.pause()
    except _Stop as why:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say(f"{why}: tearing down")
        problems = teardown(run)
        say("torn down" if not problems else "left behind: " + "; ".join(problems))
        return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--token" or not re.fullmatch(r"[0-9a-f]{6}", args[1]):
        print(f"usage: python -m {MODULE} --token HEX6 (started by invoke launch)", file=sys.stderr)
        return 2
    return keep(args[1])


if __name__ == "__main__":
    sys.exit(main())
