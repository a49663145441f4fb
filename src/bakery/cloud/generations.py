"""Image generations in one environment: which bakery images exist, which one is current, and
which ones may go.

An image's life: `candidate` while its bake runs, `released` once every environment has its
own, `retired` when newer generations replace it. Rules for removal, so that retiring is safe:
- the newest `keep` released generations stay;
- an image that a server of the project still runs from is never deleted (it is marked
  `retired` and deleted by a later run, once nothing uses it);
- a candidate is only removed when it is older than any bake could still be running, so a
  rebuild never deletes the images of a bake in progress elsewhere.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .api import TAG, image_property

# Besides TAG, on a builder's port.
BUILDER_TAG = "bakery-builder"


def utc(timestamp: Any) -> dt.datetime:
    """An OpenStack timestamp ('2026-11-26T01:02:03Z', or without a zone) as aware UTC."""
    moment = dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Generation:
    image_id: str
    name: str
    status: str  # candidate | released | retired
    build_id: str
    inputs_hash: str
    base_image_id: str
    created: dt.datetime

    @classmethod
    def of(cls, image: Any) -> Generation:
        def prop(key: str) -> str:
            return str(image_property(image, key) or "")

        return cls(
            image_id=image.id,
            name=image.name,
            status=prop("bakery_status"),
            build_id=prop("bakery_build_id"),
            inputs_hash=prop("bakery_inputs_hash"),
            base_image_id=prop("bakery_base_image_id"),
            created=utc(image.created_at),
        )


def generations(conn, definition: str) -> list[Generation]:
    """This project's bakery images of `definition`, newest first."""
    images = conn.image.images(owner=conn.current_project_id, tag=TAG)
    return generations_in(images, conn.current_project_id, definition)


def generations_in(images, project_id: str, definition: str) -> list[Generation]:
    """The same, out of a list of images read already (any owner, any tag): tagged, or
    carrying bakery's property (a snapshot whose tagging never happened is one too)."""
    found = [
        Generation.of(image)
        for image in images
        if image.owner == project_id
        and (TAG in (image.tags or []) or image_property(image, TAG) == "image")
        and image_property(image, "bakery_definition") == definition
    ]
    return sorted(found, key=lambda g: g.created, reverse=True)


def newest_released(gens: list[Generation]) -> Generation | None:
    return next((g for g in gens if g.status == "released"), None)


def images_in_use(conn) -> set[str]:
    """IDs of the images this project's servers were booted from."""
    used = set()
    for server in conn.compute.servers():
        image = server.image
        image_id = image.get("id") if isinstance(image, dict) else getattr(image, "id", None)
        if image_id:
            used.add(image_id)
    return used


@dataclass(frozen=True)
class RetirePlan:
    retire: list[Generation]  # released, beyond `keep`: marked retired
    delete: list[Generation]  # retired or stale candidates that nothing uses
    kept_in_use: list[Generation]  # would go, but a server still runs from it


def plan_retirement(
    gens: list[Generation],
    in_use: set[str],
    keep: int,
    now: dt.datetime,
    candidate_grace: dt.timedelta,
) -> RetirePlan:
    gens = sorted(gens, key=lambda g: g.created, reverse=True)  # newest first, whoever asks
    released = [g for g in gens if g.status == "released"]
    retire = released[keep:]
    going = retire + [g for g in gens if g.status == "retired"]
    going += [g for g in gens if g.status == "candidate" and now - g.created > candidate_grace]
    delete = [g for g in going if g.image_id not in in_use]
    kept = [g for g in going if g.image_id in in_use]
    return RetirePlan(retire, delete, kept)


@dataclass(frozen=True)
class BuilderPort:
    """A builder's port (tagged `bakery-builder`), and its server where it has one."""

    port_id: str
    name: str
    server_id: str | None
    created: dt.datetime


def builder_ports(ports) -> list[BuilderPort]:
    return [
        BuilderPort(p.id, p.name, p.device_id or None, utc(p.created_at))
        for p in ports
        if BUILDER_TAG in (p.tags or [])
    ]


def split_by_age(
    builders: list[BuilderPort], now: dt.datetime, grace: dt.timedelta
) -> tuple[list[BuilderPort], list[BuilderPort]]:
    """(stale, recent): builders older than any bake could still be running, left by a bake
    killed without a chance to clean up (SIGKILL, a lost CI runner); and the others, which
    may belong to a bake running elsewhere, or to one killed a moment ago."""
    stale = [b for b in builders if now - b.created > grace]
    return stale, [b for b in builders if now - b.created <= grace]
