"""What a local cluster consists of, recorded in `<state_dir>/local-run/run.json` (0600) the moment
its keeper exists and before anything else is made: the run's name (its keeper), its
namespaces, its VMs and their files. `status` and `destroy` work from it; a record whose keeper
is gone is what a killed launch or a crashed keeper left, and is swept.

Everything of a run lives under `<state_dir>/local-run/` (the run directory, 0700): the base image
link, each node's disk, seed, console log and QEMU log, etcd's data, the lighthouse's config
and the logs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BakeryError
from ..files import write_private

KIND = "bakery-local-run"


def run_dir(state_dir: Path) -> Path:
    return state_dir / "local-run"


def record_path(state_dir: Path) -> Path:
    return run_dir(state_dir) / "run.json"


@dataclass(frozen=True)
class NodeRecord:
    name: str
    az: str
    netns: str
    address: str
    overlay_address: str | None
    dir: str  # its files: disk, seed, console log, QEMU log and PID file, agent socket


@dataclass
class RunRecord:
    run: str  # bakery-<keeper pid>-<token>: the keeper owns it
    status: str  # launching, then running once the keeper has adopted the cluster
    created: str  # UTC, ISO 8601
    scope: str
    image: str  # the baked qcow2 the disks are overlays of
    build_id: str
    accel: str
    external_netns: str
    external_address: str  # on the underlay
    etcd_url: str
    lighthouse: str | None  # overlay address
    namespaces: list[str] = field(default_factory=list)
    nodes: list[NodeRecord] = field(default_factory=list)

    def save(self, state_dir: Path) -> None:
        data = {"kind": KIND, **asdict(self)}
        write_private(record_path(state_dir), json.dumps(data, indent=2) + "\n")


def load(state_dir: Path) -> RunRecord | None:
    """The recorded run, or None when there is none."""
    path = record_path(state_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.pop("kind", None) != KIND:
            raise ValueError(f"not a {KIND} record")
        nodes = [NodeRecord(**n) for n in data.pop("nodes")]
        return RunRecord(**data, nodes=nodes)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise BakeryError(
            f"{path}: unreadable local run record ({error}); remove it by hand once no VM of "
            "it runs (`ip netns list` shows the namespaces: bakery-<keeper pid>-…)"
        ) from None
