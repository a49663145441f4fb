"""`invoke rebuild`: bake a new generation when something changed, then retire old ones.

Meant to run unattended (systemd timer or CI schedule, see deploy/). A new generation is baked,
in every environment at once, when any environment
- has no released image of the definition,
- has one whose inputs (definition, Patroni lock, elements) differ from the checkout's,
- has one made from another base image than the newest one the cloud now offers, or
- has one older than `image.max_age_days` (the base element's package upgrades).
Whether or not it bakes, each environment's old generations are then retired
(`generations.plan_retirement`). Only one rebuild runs at a time per state directory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Settings
from ..errors import BakeryError
from ..image.definition import LoadedDefinition, load_definition
from ..lock import held
from . import bake as cloudbake
from .api import TAG, all_images, cloud_errors, connect, delete_servers, in_parallel
from .generations import (
    BuilderPort,
    builder_ports,
    generations_in,
    images_in_use,
    newest_released,
    plan_retirement,
    split_by_age,
)

# A candidate younger than this may belong to a bake still running elsewhere.
CANDIDATE_GRACE_MARGIN = dt.timedelta(hours=1)


@dataclass
class RebuildResult:
    reasons: dict[str, list[str]]  # environment -> why it needs a new generation
    baked: cloudbake.BakeResult | None = None
    rolled: str | None = None  # --roll: what the roll did
    retired: dict[str, list[str]] = field(default_factory=dict)  # environment -> image names
    deleted: dict[str, list[str]] = field(default_factory=dict)
    kept_in_use: dict[str, list[str]] = field(default_factory=dict)
    # Builders (port and server) a bake left: still running, or killed outright.
    left_by_bakes: dict[str, list[str]] = field(default_factory=dict)


def rebuild(
    settings: Settings,
    force: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    roll: bool = False,
) -> RebuildResult:
    """Nothing to do costs one authentication and two reads per environment: every image
    the project sees (generations and base images at once) and bakery's builder ports."""
    loaded = load_definition(settings.image.definition)
    # Only reading the clouds: a bad config or an unreachable cloud changes nothing, not even
    # the state directory.
    seen = _read(settings)
    reasons = _reasons(settings, loaded, seen, force)
    result = RebuildResult(reasons)
    for label, why in reasons.items():
        log(f"{label}: " + ("; ".join(why) if why else "current"))
    if dry_run:
        _retire(settings, loaded, seen, result, dry_run, log)
        return result
    with _only_one_rebuild(settings):
        if any(reasons.values()):
            result.baked = cloudbake.bake(settings, log=log, seen=seen)
            for label, env in seen.items():  # the bake changed them: read them again
                with cloud_errors(f"environment {label}"):
                    env.images = all_images(env.conn)
        refused = None
        if roll:  # before retiring, so that the generations it leaves can go at once
            from .roll import roll_if_due

            try:
                result.rolled = roll_if_due(settings, log)
            except BakeryError as error:
                refused = error
        _retire(settings, loaded, seen, result, dry_run, log)
        if refused is not None:
            raise refused
    return result


@dataclass
class _Environment(cloudbake.Seen):
    builders: list[BuilderPort] = field(default_factory=list)


def _read(settings: Settings) -> dict[str, _Environment]:
    """Every environment at once: one authentication, its images and its builder ports."""

    def read(label: str) -> _Environment:
        conn = connect(label, settings.environments[label])
        with cloud_errors(f"environment {label}"):
            ports = conn.network.ports(tags=TAG)
            return _Environment(conn, all_images(conn), builder_ports(ports))

    labels = list(settings.environments)
    seen = dict(zip(labels, in_parallel(labels, read), strict=True))
    errors = [env for env in seen.values() if isinstance(env, BakeryError)]
    if errors:
        raise errors[0]
    return seen


def _reasons(
    settings: Settings, loaded: LoadedDefinition, seen: dict, force: bool
) -> dict[str, list[str]]:
    now = dt.datetime.now(dt.UTC)
    max_age = dt.timedelta(days=settings.image.max_age_days)
    inputs_hash = loaded.inputs_hash()
    reasons = {}
    for label, env in seen.items():
        where = f"environment {label}"
        gens = generations_in(env.images, env.conn.current_project_id, loaded.name)
        newest = newest_released(gens)
        base = cloudbake.find_base_image(env.conn, settings, loaded, where, env.images)
        why = ["--force"] if force else []
        if newest is None:
            why.append(f"no released image of {loaded.name}")
        else:
            if newest.inputs_hash != inputs_hash:
                why.append(f"{newest.name} was built from other inputs than this checkout's")
            if newest.base_image_id != base.id:
                why.append(f"a newer base image: {base.name} ({base.id})")
            if now - newest.created > max_age:
                days = (now - newest.created).days
                why.append(f"{newest.name} is {days} days old (image.max_age_days: {max_age.days})")
        reasons[label] = why
    return reasons


def _retire(settings, loaded, seen: dict, result: RebuildResult, dry_run: bool, log) -> None:
    grace = dt.timedelta(seconds=settings.image.build_timeout + cloudbake.SNAPSHOT_TIMEOUT)
    grace += CANDIDATE_GRACE_MARGIN
    verb = "would" if dry_run else "will"
    for label, env in seen.items():
        conn = env.conn
        with cloud_errors(f"environment {label}: retiring old generations"):
            now = dt.datetime.now(dt.UTC)
            gens = generations_in(env.images, conn.current_project_id, loaded.name)
            # Which servers run from an image matters only when some image may go.
            maybe_going = plan_retirement(gens, set(), settings.image.keep_released, now, grace)
            in_use = images_in_use(conn) if maybe_going.delete else set()
            plan = plan_retirement(gens, in_use, settings.image.keep_released, now, grace)
            for gen in plan.kept_in_use:
                log(f"{label}: {gen.name} stays while servers run from it")
            for gen in plan.retire:
                log(f"{label}: {verb} retire {gen.name}")
                if not dry_run:
                    conn.image.update_image(gen.image_id, bakery_status="retired")
            for gen in plan.delete:
                log(f"{label}: {verb} delete {gen.name} ({gen.status})")
                if not dry_run:
                    conn.image.delete_image(gen.image_id, ignore_missing=True)
            young = [g for g in gens if g.status == "candidate" and g not in plan.delete]
            for gen in young:
                log(
                    f"{label}: candidate {gen.name} of a bake still running, or killed "
                    f"(removable from {(gen.created + grace):%Y-%m-%d %H:%M} UTC)"
                )
            stale, recent = split_by_age(env.builders, now, grace)
            for builder in recent:
                log(
                    f"{label}: builder {_shown(builder)} of a bake still running, or killed "
                    f"(removable from {(builder.created + grace):%Y-%m-%d %H:%M} UTC)"
                )
            for builder in stale:
                log(f"{label}: {verb} delete builder {_shown(builder)}, left by a killed bake")
                if not dry_run:
                    if builder.server_id:
                        delete_servers(conn, [builder.server_id])
                    conn.network.delete_port(builder.port_id, ignore_missing=True)
        result.retired[label] = [g.name for g in plan.retire]
        result.deleted[label] = [g.name for g in plan.delete]
        result.kept_in_use[label] = [g.name for g in plan.kept_in_use]
        result.left_by_bakes[label] = [g.name for g in young] + [b.name for b in recent + stale]


def _shown(builder: BuilderPort) -> str:
    server = f"server {builder.server_id}" if builder.server_id else "no server"
    return f"{builder.name} (port {builder.port_id}, {server})"


def _only_one_rebuild(settings: Settings):
    """A timer and a person may start a rebuild at the same moment: the second one stops."""
    return held(settings.state_dir / "rebuild.lock", "rebuild")
