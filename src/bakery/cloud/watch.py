"""Waiting on a cluster through its nodes' consoles, with a progress display: on a terminal a
block of one line per node redrawn in place; elsewhere (a log, CI) a plain line whenever a
node's line changes. On timeout the error names each node's last report and console tail.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ..node.report import age_text, lag_text
from .api import Cancelled, CloudError
from .cluster import CloudNode, ClusterView

POLL = 5.0  # seconds between reads of the consoles


class Progress:
    """Where waits show what they see. `show` takes one line per node as (what it says, how
    old that is): a log gets a line when what a node says changes, not when it ages."""

    def __init__(self, log: Callable[[str], None], stream: TextIO | None = None):
        self.log = log
        self.stream = stream if stream is not None and stream.isatty() else None
        self._shown: dict[str, str] = {}
        self._drawn = 0

    def show(self, headline: str, lines: dict[str, tuple[str, str]]) -> None:
        if self.stream is None:
            for key, (said, age) in lines.items():
                if self._shown.get(key) != said:
                    self.log(f"{said}{age}")
            self._shown = {key: said for key, (said, _) in lines.items()}
            return
        block = [headline, *(said + age for said, age in lines.values())]
        # Up over the last block, then each line cleared and written anew.
        out = "\x1b[F" * self._drawn + "".join(f"\x1b[2K{line}\n" for line in block)
        self.stream.write(out)
        self.stream.flush()
        self._drawn = len(block)

    def done(self) -> None:
        self._drawn = 0
        self._shown = {}


def node_line(view: ClusterView, node: CloudNode) -> tuple[str, str]:
    """One node as a progress line: what it says, and since when."""
    report = node.report
    parts = [node.name, f"server {node.server_status}"]
    if report is None:
        parts.append("no report yet" if node.server is not None else "")
    elif report.error is not None:
        parts.append(report.error)
    else:
        role = (report.role or "?") + (" (sync)" if report.sync else "")
        state = report.replication or report.state or "?"
        parts += [role, state, f"lag {lag_text(report.lag)}"]
    age = f", reported {age_text(report.age(view.read_at))} ago" if report is not None else ""
    return ", ".join(p for p in parts if p), age


def wait_for_view(
    what: str,
    read: Callable[[], ClusterView],
    problems_of: Callable[[ClusterView], list[str]],
    timeout: float,
    cancel: threading.Event,
    progress: Progress,
) -> ClusterView:
    """Read the cluster every POLL seconds until `problems_of` finds none; CloudError at the
    deadline (naming each node's last report and its console's tail), Cancelled at once when
    `cancel` is set. A read that fails (the cloud's API hiccups) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    view: ClusterView | None = None
    while True:
        if cancel.is_set():
            raise Cancelled(f"stopped while waiting for {what}")
        try:
            view = read()
            problems = problems_of(view)
        except CloudError as error:
            problems = [f"reading the cluster: {error}"]
        elapsed = time.monotonic() - started
        if view is not None:
            lines = {name: node_line(view, node) for name, node in view.nodes.items()}
            headline = f"waiting for {what} ({elapsed:.0f} s)" if problems else f"{what}: done"
            progress.show(headline, lines)
        if not problems:
            progress.done()
            return view
        if time.monotonic() > deadline:
            progress.done()
            raise CloudError(timeout_message(what, timeout, problems, view))
        cancel.wait(POLL)


def timeout_message(
    what: str, timeout: float, problems: list[str], view: ClusterView | None
) -> str:
    parts = [f"timed out after {timeout:.0f} s waiting for {what}: " + "; ".join(problems)]
    for node in view.nodes.values() if view is not None else []:
        if not node.launched:
            continue
        report = node.report
        said = "".join(node_line(view, node)) if report is not None else f"{node.name}: no report"
        tail = "\n".join("      " + line for line in node.console_tail().splitlines())
        parts.append(f"  {said}; console:\n{tail or '      (empty)'}")
    return "\n".join(parts)


def default_progress(log: Callable[[str], None]) -> Progress:
    return Progress(log, sys.stdout)
