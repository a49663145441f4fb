"""Undo what was created, in reverse order, whatever happened.

Every step that creates something (a mount, a loop device, a swapped file, later a cloud
server or image) registers how to release it the moment it exists. Releasing runs in reverse,
goes on past a failure, and reports each failed release with what to remove by hand, without
hiding the error that started the unwinding.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from .errors import BakeryError


class ReleaseError(BakeryError):
    """Something could not be released; the message names it and how to remove it by hand."""


class Cleanup:
    """Undo actions registered as resources are created; run in reverse, report failures."""

    def __init__(self, log: Callable[[str], None]):
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self._log = log
        self.leftovers: list[str] = []

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def run(self) -> None:
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except Exception as error:  # noqa: BLE001 - report every failed release, go on
                self.leftovers.append(f"{what}: {error}")
                self._log(f"cleanup FAILED: {what}: {error}")

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Release what is registered inside the block when the block ends, not later.

        A failed release is an error of its own only when the block succeeded: it never
        replaces the error that ended the block (that one is raised, the failure is logged
        and kept in `leftovers`)."""
        mark = len(self._actions)
        try:
            yield
        except BaseException:
            self._release_since(mark)
            raise
        failed = self._release_since(mark)
        if failed:
            raise ReleaseError("could not release: " + "; ".join(failed))

    def _release_since(self, mark: int) -> list[str]:
        inner = Cleanup(self._log)
        inner._actions = self._actions[mark:]
        del self._actions[mark:]
        inner.run()
        self.leftovers += inner.leftovers
        return inner.leftovers


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM (a CI stop, `timeout`, systemd) unwinds like Ctrl-C, so that cleanup runs."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded_from_interrupts(log: Callable[[str], None]) -> Iterator[None]:
    """Let a cleanup finish: a second Ctrl-C (or SIGTERM) while it runs would leave the rest
    of what it removes behind, so it is noted and ignored until the cleanup is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        log(f"signal {signum} ignored: cleaning up first, so that nothing is left behind")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
