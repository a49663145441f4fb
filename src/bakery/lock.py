"""Only one at a time: a lock file in the state directory, held with flock for as long as the
work runs. The kernel releases it when the process ends, however it ends (SIGKILL, a lost CI
runner), so a lock is never stale. The holder writes what it is into the file, so that the
one refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import BakeryError


class Locked(BakeryError):
    """Another run holds the lock; nothing was done."""


@contextlib.contextmanager
def held(path: Path, what: str) -> Iterator[None]:
    """Hold `path` while the block runs, or raise Locked naming the holder. `what` says what
    this run is (`roll`, `replace prod1-postgresql-1`), for the next one to read."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split("\n")[0].strip()
            holder = holder or "another run"
            raise Locked(f"{holder} holds {path}; nothing was done") from None
        since = dt.datetime.now(dt.UTC).strftime("%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()}, since {since})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lifecycle_lock(state_dir: Path, scope: str, what: str):
    """One launch, roll, replace or destroy of a cluster at a time."""
    return held(state_dir / f"lifecycle-{scope}.lock", what)
