"""`invoke destroy [--az …] --yes`: the cluster's servers (stopped gracefully, replicas first,
then deleted) and then its ports, in every AZ or the ones named. Images are left alone.

A whole-cluster destroy also clears the scope's keys in the DCS when this machine reaches it
(lifecycle.dcs_url), and otherwise says how: a stale `initialize` key keeps the next cluster
of the same scope from bootstrapping. Interrupted, a re-run goes on from what is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..cleanup import interrupt_on_sigterm
from ..config import Settings
from ..errors import BakeryError
from ..lock import lifecycle_lock
from ..node import plan as planning
from . import dcs as cluster_dcs
from .api import cloud_errors, delete_port
from .cluster import connections, read_cluster
from .replace import delete_server, stop_gracefully
from .roll import Journal


@dataclass
class DestroyResult:
    servers: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    dcs_keys: int | None = None  # keys cleared; None: not cleared (see the log)


def destroy(
    settings: Settings,
    az_labels: Iterable[str],
    yes: bool,
    log: Callable[[str], None] = print,
) -> DestroyResult:
    labels = planning.select_azs(settings, az_labels)
    whole = set(labels) == set(settings.azs)
    if not yes:
        where = "every AZ" if whole else f"AZ {', '.join(labels)}"
        raise BakeryError(
            f"destroy deletes the servers and ports of cluster {settings.cluster.scope} in "
            f"{where}: add --yes to do it; nothing was changed"
        )
    with interrupt_on_sigterm():
        view = read_cluster(settings, labels, connections(settings, labels))
        with lifecycle_lock(settings.state_dir, settings.cluster.scope, "destroy"):
            result = DestroyResult()
            nodes = view.launched()
            leader = view.health(stale=False).leader
            timeout = settings.lifecycle.stop_timeout
            cancel = threading.Event()
            # Replicas first: the leader, stopped last, has no one to hand over to and stops
            # as the leader (a destroy of some AZs hands over to a node in another one).
            stop_gracefully([n for n in nodes if n.name != leader], timeout, log, cancel)
            stop_gracefully([n for n in nodes if n.name == leader], timeout, log, cancel)
            for node in nodes:
                if node.server is not None:
                    delete_server(node, log)
                    result.servers.append(node.name)
            for node in nodes:
                if node.port is not None:
                    log(f"{node.name}: deleting port {node.port.name}")
                    with cloud_errors(f"environment {node.environment}: deleting its port"):
                        delete_port(node.conn, node.port.id)
                    result.ports.append(node.port.name)
            if whole:
                Journal(settings).clear()
                result.dcs_keys = _clear_dcs(settings, log)
    return result


def _clear_dcs(settings: Settings, log: Callable[[str], None]) -> int | None:
    prefix = cluster_dcs.scope_prefix(settings)
    if settings.lifecycle.dcs_url is None:
        log(
            f"the DCS still holds the cluster's keys under {prefix} (lifecycle.dcs_url is not "
            "set, so bakery cannot reach it): clear them before a cluster of the same scope "
            f"is launched again, or it will not bootstrap: `{cluster_dcs.by_hand(settings)}`"
        )
        return None
    try:
        cleared = cluster_dcs.Dcs(settings).clear()
    except cluster_dcs.DcsError as error:
        raise BakeryError(
            f"the servers and ports are gone, but the DCS keys under {prefix} are not: {error}; "
            f"clear them before the same scope is launched again: "
            f"`{cluster_dcs.by_hand(settings)}`"
        ) from None
    log(f"DCS: cleared {len(cleared.keys)} key(s) under {cleared.prefix}")
    return len(cleared.keys)
