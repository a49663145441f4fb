"""A node gets a new server: `invoke replace NODE`, and each step of a roll.

The node keeps its port (its address, its name) and gets a freshly rendered bundle. Steps:
1. the old server, if there is one, is stopped gracefully (a delete alone is a hard power-off
   on real clouds): the guest shuts down, and on the leader patroni.service's ExecStop hands
   the leadership to a replica first (docs/node-report.md); then it is deleted;
2. the new server boots on the port from the target generation;
3. the wait: until the node reports itself a streaming replica under lifecycle.max_lag (or,
   for a roll, until the whole cluster is healthy again).

Nothing is taken back on an interrupt: a server that was stopped or booted is part of the
node, and a re-run goes on from what the cloud shows (roll.py keeps a journal of the node in
transition).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..cleanup import Cleanup, interrupt_on_sigterm
from ..config import Settings
from ..errors import BakeryError
from ..lock import lifecycle_lock
from ..node import plan as planning
from ..node.report import replica_problem
from . import launch, watch
from .api import (
    Cancelled,
    CloudError,
    PreflightError,
    cloud_errors,
    delete_servers_named,
    server_in,
    wait_for,
)
from .cluster import CloudNode, ClusterView, connections, read_cluster


@dataclass(frozen=True)
class Replaced:
    node: str
    old_image: str | None  # the generation (or image id) the old server ran, None: no server
    new_image: str
    seconds: float  # from the stop to a streaming replica (or a healthy cluster)


def replace(
    settings: Settings,
    node_name: str,
    log: Callable[[str], None] = print,
    progress: watch.Progress | None = None,
) -> Replaced:
    """`invoke replace NODE`: a new server from the newest released generation on the node's
    port; a healthy leader hands over first."""
    slots = {name: label for name, label, _ in planning.node_slots(settings, settings.azs)}
    if node_name not in slots:
        raise BakeryError(
            f"replace: no node {node_name!r} in this config; nodes: {', '.join(slots)}"
        )
    progress = progress or watch.Progress(log)
    with interrupt_on_sigterm():
        labels = list(settings.azs)
        view = read_cluster(settings, labels, connections(settings, labels))
        refusal = replace_refusal(view, node_name)
        if refusal:
            raise BakeryError(f"replace {node_name}: {refusal}; nothing was changed")
        targets, problems = launch.resolve_targets(settings, [slots[node_name]])
        if problems:
            raise PreflightError(problems)
        with lifecycle_lock(settings.state_dir, settings.cluster.scope, f"replace {node_name}"):
            step = Step(settings, targets[slots[node_name]], log, progress, threading.Event())
            return step.run(view, node_name, until="node")


def replace_refusal(view: ClusterView, name: str) -> str | None:
    """Why replacing `name` now would do harm (None: it would not). The database must stay
    up: a leader needs a replica to hand over to, a replica a leader to stream from, and a
    healthy node is not taken down while another one is down."""
    node = view.nodes[name]
    if not node.launched:
        return f"it was never launched (it has no port): `invoke launch --az {node.az}`"
    health = view.health(stale=False)
    if health.leader == name:
        others = [
            n
            for n in view.launched()
            if n.name != name
            and n.report is not None
            and replica_problem(n.report, view.settings.max_lag) is None
        ]
        if not others:
            return "it is the leader and no replica streams to take over"
        return None
    if health.leader is None:
        return "no node leads: a new server would have nothing to replicate from"
    own = [p for p in health.problems if p.startswith(f"{name}:")]
    others = [p for p in health.problems if not p.startswith(f"{name}:")]
    healthy = node.server is not None and not own
    if healthy and others:
        return "the cluster is not healthy, and this node is: " + "; ".join(others)
    return None


class Step:
    """Replacing one node's server in one AZ (`target`, resolved by launch)."""

    def __init__(self, settings: Settings, target, log, progress: watch.Progress, cancel):
        self.settings = settings
        self.target = target
        self.log = log
        self.progress = progress
        self.cancel = cancel

    def run(self, view: ClusterView, name: str, until: str) -> Replaced:
        """`until`: "node" (the node streams) or "cluster" (the whole cluster is healthy)."""
        started = time.monotonic()
        node = view.nodes[name]
        old = generation_name(node) if node.server is not None else None
        if node.server is not None:
            self.stop(node)
            self.delete(node)
            self.log(f"{name}: old server gone after {time.monotonic() - started:.0f} s")
        self.boot(view, node)
        self.log(f"{name}: new server ACTIVE after {time.monotonic() - started:.0f} s")
        if until == "node":
            what, problems_of = f"{name} to stream", functools.partial(node_problems, name=name)
        else:
            what, problems_of = "a healthy cluster", lambda v: v.health(stale=False).problems
        labels = list(dict.fromkeys(n.az for n in view.nodes.values()))
        conns = {n.environment: n.conn for n in view.nodes.values()}
        watch.wait_for_view(
            what,
            lambda: read_cluster(self.settings, labels, conns),
            problems_of,
            self.settings.lifecycle.node_timeout,
            self.cancel,
            self.progress,
        )
        seconds = time.monotonic() - started
        self.log(
            f"{name}: replaced ({old or 'no server'} -> {self.target.image.name}, {seconds:.0f} s)"
        )
        return Replaced(name, old, self.target.image.name, seconds)

    def stop(self, node: CloudNode) -> None:
        stop_gracefully([node], self.settings.lifecycle.stop_timeout, self.log, self.cancel)

    def delete(self, node: CloudNode) -> None:
        delete_server(node, self.log)

    def boot(self, view: ClusterView, node: CloudNode) -> None:
        cleanup = Cleanup(self.log)  # nothing is released: what boots is the node (see above)
        port = node.port
        if port is None:
            port = launch.create_port(
                self.settings, self.target, node.name, None, cleanup, self.log
            )
        label = node.az
        addresses = launch.stand_in_addresses(self.settings, {label: self.target})
        addresses |= {n.name: n.address for n in view.nodes.values() if n.az == label and n.address}
        addresses[node.name] = port.fixed_ips[0]["ip_address"]
        (bundle,), plan = launch.render_bundles(self.settings, [label], addresses, [node.name])
        server = launch.boot_server(self.settings, self.target, bundle, port, cleanup, self.log)
        launch.wait_active(node.conn, server, bundle.node, self.cancel)
        planning.save(self.settings, plan)


def stop_gracefully(
    nodes: list[CloudNode], timeout: float, log: Callable[[str], None], cancel: threading.Event
) -> None:
    """Stop the servers as a shutdown does (the leader hands over on the way), all at once,
    and wait until each is SHUTOFF; one that is not within `timeout` is deleted all the same
    (the delete powers it off)."""
    stopping = []
    for node in nodes:
        server = node.server
        if server is None or server.status != "ACTIVE":
            log(f"{node.name}: server {node.server_status}: no graceful stop")
            continue
        if getattr(server, "task_state", None) == "deleting":  # an interrupted run's delete
            log(f"{node.name}: server {server.id} is being deleted: no graceful stop")
            continue
        log(f"{node.name}: stopping server {server.id}")
        with cloud_errors(f"environment {node.environment}: stopping {node.name}"):
            node.conn.compute.stop_server(server)
        stopping.append(node)
    deadline = time.monotonic() + timeout
    for node in stopping:
        try:
            wait_for(
                f"server {node.name} to stop",
                functools.partial(
                    server_in, node.conn, node.server.id, "SHUTOFF", node.environment
                ),
                max(1.0, deadline - time.monotonic()),
                cancel,
            )
        except Cancelled:
            raise
        except CloudError as error:
            log(f"{node.name}: {error}; deleting it anyway")


def delete_server(node: CloudNode, log: Callable[[str], None]) -> None:
    log(f"{node.name}: deleting server {node.server.id}")
    with cloud_errors(f"environment {node.environment}: deleting {node.name}"):
        delete_servers_named(node.conn, node.name)


def node_problems(view: ClusterView, name: str) -> list[str]:
    """What keeps `name` from being a healthy member: its server, its report, a leader."""
    node = view.nodes[name]
    if node.server is None or node.server.status != "ACTIVE":
        return [f"{name}: server {node.server_status}"]
    if node.report is None:
        return [f"{name}: no report yet"]
    health = view.health(stale=False)
    if health.leader == name:
        return []
    problems = [] if health.leader else ["no leader"]
    why = replica_problem(node.report, view.settings.max_lag)
    return problems + ([f"{name}: {why}"] if why else [])


def generation_name(node: CloudNode) -> str:
    return node.generation.name if node.generation is not None else f"image {node.image_id}"
