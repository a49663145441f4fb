"""Undo what was created, in reverse order, whatever happened.

Every step that creates something (a mount, a loop device, a swapped file, later a cloud
server or image) registers how to release it the moment it exists. Releasing runs in reverse,
goes on past a failure, and reports each failed release with what to remove by hand, without
hiding the error that started the unwinding.
"""

from __future__ import annotations

import contextlib
import os
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


def run_in_parallel(groups: list[tuple[Cleanup, ...]]) -> None:
    """Run independent cleanups at once (one group per cloud environment: their releases
    wait on different clouds), each group's cleanups one after the other. Returns when all
    are done; failures are in each cleanup's `leftovers`."""
    threads = [
        threading.Thread(target=_run_each, args=(group,), name="cleanup", daemon=True)
        for group in groups
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _run_each(group: tuple[Cleanup, ...]) -> None:
    for cleanup in group:
        cleanup.run()


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that the same cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM (a CI stop, `timeout`, systemd) unwinds like Ctrl-C, so that cleanup runs."""

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _note(text: str) -> None:
    """Write from a signal handler: os.write, because the interrupted code may be inside a
    buffered write to the same stream, which must not be re-entered."""
    with contextlib.suppress(OSError):
        os.write(2, f"bakery: {text}\n".encode())


@contextlib.contextmanager
def _signals_held(handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def shielded_from_interrupts() -> Iterator[None]:
    """Let a cleanup finish: a second Ctrl-C (or SIGTERM) while it runs would leave the rest
    of what it removes behind, so it is noted and ignored until the cleanup is done."""

    def handler(signum, frame):  # noqa: ARG001
        _note(f"signal {signum} ignored: cleaning up first, so that nothing is left behind")

    with _signals_held(handler):
        yield


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Around a call that creates something in a cloud: an interrupt in the middle would drop
    the request while the cloud may still carry it out, leaving a resource nobody removes. The
    signal waits until the call has returned (and what it made is known), then interrupts."""
    caught: list[int] = []

    def handler(signum, frame):  # noqa: ARG001
        caught.append(signum)
        _note("interrupt noted: it takes effect once the current cloud call has returned")

    with _signals_held(handler):
        yield
    if caught:
        raise Terminated("signal 15") if caught[0] == signal.SIGTERM else KeyboardInterrupt()
