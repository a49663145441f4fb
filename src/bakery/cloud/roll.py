"""`invoke roll`: every node onto the newest released generation, the way autobase and the
Kubernetes operators roll Patroni clusters: replicas first, one at a time, the leader last,
after a controlled handover to a replica that already runs the new generation.

- It starts only from a healthy cluster (one leader, every replica streaming under
  lifecycle.max_lag, every server ACTIVE) and says why not otherwise; nothing is changed then.
- Each node is replaced as replace.Step does it (graceful stop, delete, new server on its
  port with a fresh bundle), and the next one waits until the whole cluster is healthy again:
  never two nodes down at once.
- Before the leader goes, in synchronous mode a replica must be the synchronous standby (it is
  the only one Patroni hands over to). The leader's graceful stop is the handover itself
  (patroni.service's ExecStop, docs/node-report.md).
- The node in transition is written to a journal in the state directory
  (`roll-<scope>.json`) before its server is touched and removed once the cluster is healthy
  again. Interrupted anywhere (Ctrl-C, SIGTERM, a failure), a re-run first finishes that node
  (boots its missing server, or waits for the new one), then goes on; the order is chosen
  afresh from what the consoles say at each step.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..cleanup import interrupt_on_sigterm
from ..config import Settings
from ..errors import BakeryError
from ..files import write_private
from ..lock import lifecycle_lock
from . import launch, watch
from .api import PreflightError
from .cluster import ClusterView, read_cluster
from .replace import Replaced, Step, generation_name


class NothingToRoll(BakeryError):
    """Every node runs the newest released generation already."""


class RollRefused(BakeryError):
    """The cluster is not healthy enough to roll; nothing was changed."""


@dataclass(frozen=True)
class RollStep:
    node: str
    az: str
    role: str  # replica, leader, or "missing" (a server to boot on the node's port)
    from_image: str
    to_image: str

    def describe(self, index: int) -> str:
        after = " (after a handover to a replica on the new generation)" * (self.role == "leader")
        return (
            f"{index}. {self.node} ({self.role}, AZ {self.az}): {self.from_image} -> "
            f"{self.to_image}{after}"
        )


@dataclass
class RollResult:
    steps: list[RollStep]
    done: list[Replaced] = field(default_factory=list)
    seconds: float = 0.0


def plan_roll(view: ClusterView, targets: dict, in_transition: str | None = None) -> list[RollStep]:
    """The nodes not on their AZ's target image, in the order they go: the node a previous
    run left in transition, then the replicas by name, the leader last."""
    leader = view.health(stale=False).leader
    behind = []
    for node in view.launched():
        target = targets[node.az].image
        if node.server is not None and node.image_id == target.id:
            continue
        role = "missing" if node.server is None else "leader" if node.name == leader else "replica"
        source = generation_name(node) if node.server is not None else "no server"
        behind.append(RollStep(node.name, node.az, role, source, target.name))

    def order(step: RollStep) -> tuple:
        return (step.node != in_transition, step.role == "leader", step.node)

    return sorted(behind, key=order)


def roll(
    settings: Settings,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    progress: watch.Progress | None = None,
) -> RollResult:
    labels = list(settings.azs)
    progress = progress or watch.Progress(log)
    with interrupt_on_sigterm():
        targets, problems = launch.resolve_targets(settings, labels)
        if problems:
            raise PreflightError(problems)
        conns = {t.environment: t.conn for t in targets.values()}
        journal = Journal(settings)
        view = read_cluster(settings, labels, conns)
        if not view.launched():
            raise NothingToRoll(
                f"nothing to roll: no node of cluster {settings.cluster.scope} exists "
                "(`invoke launch` starts them)"
            )
        steps = plan_roll(view, targets, journal.node())
        if not steps:
            journal.clear()
            images = ", ".join(sorted({t.image.name for t in targets.values()}))
            raise NothingToRoll(f"nothing to roll: every node runs {images}")
        for index, step in enumerate(steps, 1):
            log(step.describe(index))
        if dry_run:
            return RollResult(steps)
        with lifecycle_lock(settings.state_dir, settings.cluster.scope, "roll"):
            return _Roll(settings, targets, conns, journal, log, progress).run(view)


class _Roll:
    def __init__(self, settings, targets, conns, journal: Journal, log, progress):
        self.settings = settings
        self.targets = targets
        self.conns = conns
        self.journal = journal
        self.log = log
        self.progress = progress
        self.cancel = threading.Event()
        self.changed = bool(journal.node())  # an earlier run left a node in transition

    def read(self) -> ClusterView:
        return read_cluster(self.settings, list(self.settings.azs), self.conns)

    def run(self, view: ClusterView) -> RollResult:
        started = time.monotonic()
        result = RollResult(plan_roll(view, self.targets, self.journal.node()))
        try:
            while True:
                view = self.read()
                pending = self.journal.node()
                steps = plan_roll(view, self.targets, pending)
                if pending and pending not in {s.node for s in steps}:
                    view = self.settle(pending)  # its new server is up: wait until it streams
                    steps = plan_roll(view, self.targets)
                if not steps:
                    break
                step = steps[0]
                self.gate(view, step.node if step.node == pending else None)
                if step.role == "leader":
                    self.prepare_handover(view, step.node)
                self.journal.write(step.node, step.to_image)
                self.changed = True
                target = self.targets[step.az]
                step_runner = Step(self.settings, target, self.log, self.progress, self.cancel)
                result.done.append(step_runner.run(view, step.node, until="cluster"))
                self.journal.clear()
        except BaseException:
            self.cancel.set()
            raise
        result.seconds = time.monotonic() - started
        return result

    def gate(self, view: ClusterView, in_transition: str | None) -> None:
        """Refuse to take a node down unless the cluster is healthy (the node a previous run
        left in transition excepted)."""
        problems = [
            p
            for p in view.health().problems
            if not (in_transition and p.startswith(f"{in_transition}:"))
        ]
        if problems:
            unchanged = "; nothing was changed" if not self.changed else ""
            raise RollRefused(
                "roll refused: the cluster is not healthy: " + "; ".join(problems) + unchanged
            )

    def settle(self, name: str) -> ClusterView:
        self.log(f"{name}: left in transition by an earlier roll: waiting for a healthy cluster")
        view = watch.wait_for_view(
            "a healthy cluster",
            self.read,
            lambda v: v.health(stale=False).problems,
            self.settings.lifecycle.node_timeout,
            self.cancel,
            self.progress,
        )
        self.journal.clear()
        return view

    def prepare_handover(self, view: ClusterView, leader: str) -> None:
        """In synchronous mode Patroni hands over only to the synchronous standby (412
        otherwise): wait until a replica on the new generation is one."""
        if not self.settings.cluster.patroni.synchronous_mode:
            return

        def sync_standbys(v: ClusterView) -> list[str]:
            ready = [
                n
                for n in v.launched()
                if n.name != leader
                and n.report is not None
                and n.report.sync
                and n.image_id == self.targets[n.az].image.id
            ]
            return [] if ready else ["no synchronous standby on the new generation yet"]

        watch.wait_for_view(
            "a synchronous standby to hand over to",
            self.read,
            sync_standbys,
            self.settings.lifecycle.node_timeout,
            self.cancel,
            self.progress,
        )


class Journal:
    """The node a roll has in transition: `<state_dir>/roll-<scope>.json`."""

    def __init__(self, settings: Settings):
        self.path: Path = settings.state_dir / f"roll-{settings.cluster.scope}.json"

    def node(self) -> str | None:
        try:
            return str(json.loads(self.path.read_text())["node"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, node: str, to_image: str) -> None:
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_private(self.path, json.dumps({"node": node, "to": to_image, "at": at}) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def roll_if_due(
    settings: Settings, log: Callable[[str], None], progress: watch.Progress | None = None
) -> str:
    """`rebuild --roll`: the roll, when a node runs an older generation; what it did, in one
    line. An unhealthy cluster is refused (RollRefused), so that a scheduled run fails."""
    try:
        result = roll(settings, log=log, progress=progress)
    except NothingToRoll as nothing:
        log(str(nothing))
        return str(nothing)
    return summary(result)


def summary(result: RollResult) -> str:
    nodes = ", ".join(f"{r.node} {r.seconds:.0f} s" for r in result.done)
    return f"rolled {len(result.done)} node(s) in {result.seconds:.0f} s ({nodes})"
