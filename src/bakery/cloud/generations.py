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
    found = [
        Generation.of(image)
        for image in conn.image.images(owner=conn.current_project_id, tag=TAG)
        if image_property(image, "bakery_definition") == definition
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


def stale_builders(conn, now: dt.datetime, grace: dt.timedelta) -> list[Any]:
    """Builder servers of this project older than any bake could still be running: left
    behind by a bake killed without a chance to clean up (SIGKILL, a lost CI runner)."""
    stale = []
    for server in conn.compute.servers():
        if (server.metadata or {}).get(TAG) != "builder":
            continue
        if now - utc(server.created_at) > grace:
            stale.append(server)
    return stale
