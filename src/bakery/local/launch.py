"""`invoke launch --target local`: the cluster as QEMU VMs on this machine, from the image of
`invoke bake --target local`, each node with exactly the bundle `invoke render` makes for the
same config, each AZ on its own segment, the DCS and the lighthouse in an external place.

Order of work, so that bad input changes nothing and nothing leaks:
1. checks, every problem at once: the config fits a local cluster (etcd3, one external DCS
   member, one lighthouse on the external place, a subnet per AZ, ...), this machine can run it
   (root, tools, KVM or TCG, free memory), the image exists and carries the configured
   PostgreSQL, no cluster of this config runs, and every node's bundle renders;
2. the plan, which `--dry-run` prints and which is what runs;
3. the keeper (the run's owner) and the run record, the namespaces, the lighthouse and etcd,
   then per node its tap, disk, seed and VM, each registered for removal before it is made;
4. the wait for a healthy cluster (one leader, streaming replicas) read from the consoles;
5. the keeper adopts the cluster. Any failure, Ctrl-C or SIGTERM before that removes what was
   made (the console and service logs stay in the run directory for a look).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..cleanup import Cleanup, interrupt_on_sigterm, shielded_from_interrupts
from ..cloud.api import PreflightError
from ..config import Settings
from ..errors import BakeryError
from ..image.localbuild import BuildResult
from ..node import plan as planning
from ..node.bundle import Bundle, build_bundles
from . import external as ext
from . import health, network, owner, state, vms
from .network import Network, Segment
from .preflight import config_problems, local_image, machine_problems


@dataclass(frozen=True)
class LocalPlan:
    """Everything a local launch will make, decided before anything is made."""

    scope: str
    labels: list[str]
    image: BuildResult = field(repr=False)
    accel: str
    accel_why: str
    network: Network
    external: ext.ExternalPlace
    machines: list[vms.VmSpec]
    nodes: planning.Plan = field(repr=False)
    bundles: list[Bundle] = field(repr=False)
    run_dir: Path
    wait_timeout: int  # lifecycle.launch_timeout

    def lines(self, run: str = "<run>") -> list[str]:
        """The plan as `--dry-run` prints it (and the launch logs it)."""
        place, first = self.external, self.machines[0]
        bundles = {b.node.name: b for b in self.bundles}
        lines = [
            f"local cluster {self.scope}: {len(self.machines)} node(s) in AZ(s) "
            f"{', '.join(self.labels)}, from {self.image.qcow2} (build {self.image.build_id})",
            f"VMs: {first.memory_mb} MiB, {first.cpus} vCPU each; accelerator {self.accel} "
            f"({self.accel_why})",
            f"namespace {network.namespace(run, network.EXTERNAL)}: the underlay "
            f"{self.network.underlay}; the external place at {place.address}: etcd "
            f"{place.etcd_url}"
            + (
                f", Nebula lighthouse {place.lighthouse} (udp {place.address}:{place.listen_port})"
                if place.lighthouse
                else ""
            ),
        ]
        for segment in self.network.segments:
            lines.append(
                f"namespace {network.namespace(run, segment.role)}: AZ {segment.az}, segment "
                f"{segment.subnet} behind router {segment.gateway} / {segment.uplink} (NAT)"
            )
            for spec in self.machines:
                if spec.az != segment.az:
                    continue
                bundle = bundles[spec.node]
                overlay = bundle.node.overlay_address
                lines.append(
                    f"  VM {spec.node}: {spec.address.ip}"
                    + (f", overlay {overlay}" if overlay else "")
                    + f", {spec.tap}, user-data {len(bundle.user_data.encode())} bytes, "
                    f"starts {', '.join(bundle.services)}"
                )
        lines += [
            f"owner: the keeper process, started first ({run} = bakery-<keeper pid>-<token>)",
            f"files: {self.run_dir}/ (disks are qcow2 overlays of the image; consoles in "
            "<node>/console.log)",
            f"then: wait up to {self.wait_timeout} s for one leader and streaming replicas",
        ]
        return lines


@dataclass(frozen=True)
class LocalLaunchResult:
    run: str
    plan: LocalPlan
    seconds: float
    table: str


def launch(
    settings: Settings,
    az_labels: Iterable[str],
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> LocalPlan | LocalLaunchResult:
    labels = planning.select_azs(settings, az_labels)
    plan = preflight(settings, labels)
    if dry_run:
        return plan
    with interrupt_on_sigterm():
        for line in owner.sweep_stale():
            log(f"swept a namespace of a local cluster whose keeper is gone: {line}")
        sweep_dead_record(settings, log)
        return _Launch(settings, plan, log).run()


# -- 1. checks and the plan --------------------------------------------------------------


def preflight(settings: Settings, labels: list[str]) -> LocalPlan:
    problems: list[str] = [str(p) for p in config_problems(settings, labels)]
    problems += machine_problems(settings, len(planning.node_slots(settings, labels)))
    accel, why = "tcg", ""
    try:
        accel, why = vms.accel_choice(settings.local.accel)
    except BakeryError as error:
        problems.append(str(error))
    image = None
    try:
        image = local_image(settings)
    except BakeryError as error:
        problems.append(str(error))
    record = state.load(settings.state_dir)
    if record is not None and owner.keeper_alive(record.run):
        problems.append(
            f"a local cluster of this config runs ({record.run}, {record.status}): "
            "`invoke destroy --target local` first"
        )
    if problems:
        raise PreflightError(problems)
    assert image is not None
    network_plan = _network(settings, labels)
    place = _external(settings, network_plan)
    specs, addresses = _machines(settings, labels, network_plan)
    try:
        nodes = planning.make_plan(settings, labels, addresses)
        bundles = build_bundles(settings, nodes)
    except BakeryError as error:
        raise PreflightError([str(error)]) from None
    return LocalPlan(
        settings.cluster.scope,
        labels,
        image,
        accel,
        why,
        network_plan,
        place,
        specs,
        nodes,
        bundles,
        state.run_dir(settings.state_dir),
        settings.lifecycle.launch_timeout,
    )


def _network(settings: Settings, labels: list[str]) -> Network:
    every_az = list(settings.azs)
    segments = []
    for label in labels:
        subnet = settings.azs[label].subnet
        assert subnet is not None
        index = every_az.index(label)
        segments.append(
            Segment(label, index, subnet, network.router_address(settings.local.underlay, index))
        )
    return Network(settings.local.underlay, segments)


def _external(settings: Settings, network_plan: Network) -> ext.ExternalPlace:
    dcs = settings.cluster.dcs
    assert dcs.etcd3 is not None
    overlay = settings.overlay
    lighthouse = overlay.lighthouses[0].overlay_address if overlay.type == "nebula" else None
    return ext.ExternalPlace(
        address=network_plan.external,
        etcd_address=ipaddress.IPv4Address(dcs.members[0].address),
        etcd_port=dcs.etcd3.port,
        lighthouse=lighthouse,
        listen_port=overlay.listen_port if lighthouse else None,
    )


def _machines(
    settings: Settings, labels: list[str], network_plan: Network
) -> tuple[list[vms.VmSpec], dict[str, ipaddress.IPv4Address]]:
    """One VM per node: its configured address, else the segment's next free host."""
    segments = {s.az: s for s in network_plan.segments}
    slots = planning.node_slots(settings, labels)
    taken = {a for _, _, a in slots if a is not None}
    free = {
        s.az: (a for a in s.subnet.hosts() if a != s.gateway and a not in taken)
        for s in network_plan.segments
    }
    specs, addresses, per_az = [], {}, dict.fromkeys(labels, 0)
    for name, label, configured in slots:
        segment = segments[label]
        address = configured or next(free[label])
        addresses[name] = address
        specs.append(
            vms.VmSpec(
                node=name,
                az=label,
                netns_role=segment.role,
                tap=f"tap{per_az[label]}",
                address=ipaddress.IPv4Interface(f"{address}/{segment.subnet.prefixlen}"),
                gateway=segment.gateway,
                memory_mb=settings.local.memory_mb,
                cpus=settings.local.cpus,
            )
        )
        per_az[label] += 1
    return specs, addresses


# -- 3. make it -----------------------------------------------------------------------------


class _Launch:
    def __init__(self, settings: Settings, plan: LocalPlan, log: Callable[[str], None]):
        self.settings = settings
        self.plan = plan
        self.log = log
        self.cleanup = Cleanup(log)

    def run(self) -> LocalLaunchResult:
        started = time.monotonic()
        try:
            run, table = self._create(started)
        except BaseException:
            with shielded_from_interrupts():
                self.cleanup.run()
            if self.cleanup.leftovers:
                self.log("left behind, remove by hand: " + "; ".join(self.cleanup.leftovers))
            self.log(f"logs of this launch (consoles, etcd, lighthouse): {self.plan.run_dir}/")
            raise
        return LocalLaunchResult(run, self.plan, time.monotonic() - started, table)

    def _create(self, started: float) -> tuple[str, str]:
        plan, settings = self.plan, self.settings
        run_dir = plan.run_dir
        _clear_old_logs(settings.state_dir)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keeper = owner.Keeper(run_dir / "keeper.log")
        run = keeper.run
        self.cleanup.push(f"keeper of {run}", lambda: owner.stop_keeper(run))
        for line in plan.lines(run):
            self.log(line)
        record = state.RunRecord(
            run=run,
            status="launching",
            created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            scope=plan.scope,
            image=str(plan.image.qcow2),
            build_id=plan.image.build_id,
            accel=plan.accel,
            external_netns=network.namespace(run, network.EXTERNAL),
            external_address=str(plan.external.address),
            etcd_url=plan.external.etcd_url,
            lighthouse=str(plan.external.lighthouse) if plan.external.lighthouse else None,
            namespaces=[network.namespace(run, network.EXTERNAL)]
            + [network.namespace(run, s.role) for s in plan.network.segments],
            nodes=[
                state.NodeRecord(
                    name=spec.node,
                    az=spec.az,
                    netns=network.namespace(run, spec.netns_role),
                    address=str(spec.address.ip),
                    overlay_address=_overlay(plan, spec.node),
                    dir=str(run_dir / spec.node),
                )
                for spec in plan.machines
            ],
        )
        path = state.record_path(settings.state_dir)
        self.cleanup.push(f"run record {path}", lambda: path.unlink(missing_ok=True))
        record.save(settings.state_dir)
        base = self._base_image(run_dir)

        ext_ns = network.create_external(run, plan.network, self.cleanup)
        for segment in plan.network.segments:
            network.create_segment(run, plan.network, segment, self.cleanup)
        lighthouse_config = run_dir / "lighthouse.yml"
        self.cleanup.push(f"{lighthouse_config}", lambda: lighthouse_config.unlink(missing_ok=True))
        if plan.external.lighthouse is not None:
            ext.start_lighthouse(settings, ext_ns, plan.external, run_dir, self.cleanup)
            self.log(f"external place: Nebula lighthouse {plan.external.lighthouse} up")
        etcd_data = run_dir / "etcd"
        self.cleanup.push(f"etcd data {etcd_data}", lambda: shutil.rmtree(etcd_data, True))
        ext.start_etcd(ext_ns, plan.external, run_dir, self.cleanup)
        self.log(f"external place: etcd healthy at {plan.external.etcd_url}")

        bundles = {b.node.name: b for b in plan.bundles}
        segments = {s.az: s for s in plan.network.segments}
        for spec in plan.machines:
            files = vms.VmFiles(run_dir / spec.node)
            network.add_tap(run, segments[spec.az], spec.tap)
            vms.prepare(
                spec, files, base, bundles[spec.node].user_data, f"{spec.node}-{run}", self.cleanup
            )
            ns = network.namespace(run, spec.netns_role)
            pid = vms.start(spec, files, ns, plan.accel, self.cleanup)
            self.log(
                f"AZ {spec.az}: VM {spec.node} started (QEMU PID {pid}), console {files.console}"
            )

        table = health.wait_healthy(settings, record, started, self.log, plan.wait_timeout)
        planning.save(settings, plan.nodes)
        record.status = "running"
        record.save(settings.state_dir)
        keeper.adopt()
        return run, table

    def _base_image(self, run_dir: Path) -> Path:
        """The baked image, linked into the run: a later bake replaces its file, never the one
        the disks are overlays of (copied where a link cannot be made)."""
        base = run_dir / "base.qcow2"
        self.cleanup.push(f"base image link {base}", lambda: base.unlink(missing_ok=True))
        base.unlink(missing_ok=True)
        try:
            os.link(self.plan.image.qcow2, base)
        except OSError:
            shutil.copyfile(self.plan.image.qcow2, base)
        return base


def _overlay(plan: LocalPlan, node: str) -> str | None:
    for n in plan.nodes.nodes:
        if n.name == node and n.overlay_address is not None:
            return str(n.overlay_address)
    return None


def _clear_old_logs(state_dir: Path) -> None:
    """What a failed launch left for a look (logs only) goes when the next one starts."""
    run_dir = state.run_dir(state_dir)
    if run_dir.exists() and not state.record_path(state_dir).exists():
        shutil.rmtree(run_dir)


def sweep_dead_record(settings: Settings, log: Callable[[str], None]) -> bool:
    """Remove what a run of this config left whose keeper is gone; True if there was one."""
    record = state.load(settings.state_dir)
    if record is None or owner.keeper_alive(record.run):
        return False
    problems = owner.teardown(record.run)
    shutil.rmtree(state.run_dir(settings.state_dir), ignore_errors=True)
    log(
        f"swept the local cluster {record.run} of this config: its keeper is gone"
        + (f" (left behind: {'; '.join(problems)})" if problems else "")
    )
    return True
