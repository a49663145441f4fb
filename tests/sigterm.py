"""SIGTERM (a CI timeout, `kill`) ends a test run the way Ctrl-C does, so teardown still runs.

pytest runs every fixture finalizer on KeyboardInterrupt, but dies without any on SIGTERM's
default action, leaving the tiers' processes, namespaces and mounts behind. The handler turns
the first SIGTERM into KeyboardInterrupt and ignores later ones (a second interrupt would cut
the teardown short); a SIGTERM that arrives inside `teardown_first()` waits until that block
is done. Installed for every tier by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class _State:
    previous = None  # the handler before ours, put back by uninstall()
    depth = 0  # how many teardown_first() blocks are running
    pending = False  # a SIGTERM arrived inside one of them
    interrupted = False  # KeyboardInterrupt has been raised for a SIGTERM


def _interrupt() -> None:
    _State.pending = False
    _State.interrupted = True
    raise KeyboardInterrupt("SIGTERM")


def _on_sigterm(_signum, _frame) -> None:
    if _State.interrupted:
        return  # already unwinding: let the teardown finish
    if _State.depth:
        _State.pending = True
        return
    _interrupt()


def install() -> None:
    _State.depth, _State.pending, _State.interrupted = 0, False, False
    _State.previous = signal.signal(signal.SIGTERM, _on_sigterm)


def uninstall() -> None:
    if _State.previous is not None:
        signal.signal(signal.SIGTERM, _State.previous)
        _State.previous = None


@contextlib.contextmanager
def teardown_first() -> Iterator[None]:
    """Run the block to its end even if SIGTERM arrives meanwhile; interrupt afterwards."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.pending and not _State.depth:
            _interrupt()
