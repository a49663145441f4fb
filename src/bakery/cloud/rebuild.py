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
from .api import cloud_errors, connect, delete_servers_named
from .generations import (
    generations,
    images_in_use,
    newest_released,
    plan_retirement,
    stale_builders,
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


def rebuild(
    settings: Settings,
    force: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    roll: bool = False,
) -> RebuildResult:
    loaded = load_definition(settings.image.definition)
    # Only reading the clouds: a bad config or an unreachable cloud changes nothing, not even
    # the state directory.
    conns = {label: connect(label, env) for label, env in settings.environments.items()}
    reasons = _reasons(settings, loaded, conns, force)
    result = RebuildResult(reasons)
    for label, why in reasons.items():
        log(f"{label}: " + ("; ".join(why) if why else "current"))
    if dry_run:
        _retire(settings, loaded, conns, result, dry_run, log)
        return result
    with _only_one_rebuild(settings):
        if any(reasons.values()):
            result.baked = cloudbake.bake(settings, log=log)
        refused = None
        if roll:  # before retiring, so that the generations it leaves can go at once
            from .roll import roll_if_due

            try:
                result.rolled = roll_if_due(settings, log)
            except BakeryError as error:
                refused = error
        _retire(settings, loaded, conns, result, dry_run, log)
        if refused is not None:
            raise refused
    return result


def _reasons(
    settings: Settings, loaded: LoadedDefinition, conns: dict, force: bool
) -> dict[str, list[str]]:
    now = dt.datetime.now(dt.UTC)
    max_age = dt.timedelta(days=settings.image.max_age_days)
    inputs_hash = loaded.inputs_hash()
    reasons = {}
    for label, conn in conns.items():
        where = f"environment {label}"
        with cloud_errors(where):
            newest = newest_released(generations(conn, loaded.name))
            base = cloudbake.find_base_image(conn, settings, loaded, where)
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


def _retire(settings, loaded, conns: dict, result: RebuildResult, dry_run: bool, log) -> None:
    grace = dt.timedelta(seconds=settings.image.build_timeout + cloudbake.SNAPSHOT_TIMEOUT)
    grace += CANDIDATE_GRACE_MARGIN
    verb = "would" if dry_run else "will"
    for label, conn in conns.items():
        with cloud_errors(f"environment {label}: retiring old generations"):
            now = dt.datetime.now(dt.UTC)
            plan = plan_retirement(
                generations(conn, loaded.name),
                images_in_use(conn),
                settings.image.keep_released,
                now,
                grace,
            )
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
            for server in stale_builders(conn, now, grace):
                log(f"{label}: {verb} delete stale builder {server.name} ({server.id})")
                if not dry_run:
                    delete_servers_named(conn, server.name)
        result.retired[label] = [g.name for g in plan.retire]
        result.deleted[label] = [g.name for g in plan.delete]
        result.kept_in_use[label] = [g.name for g in plan.kept_in_use]


def _only_one_rebuild(settings: Settings):
    """A timer and a person may start a rebuild at the same moment: the second one stops."""
    return held(settings.state_dir / "rebuild.lock", "rebuild")
