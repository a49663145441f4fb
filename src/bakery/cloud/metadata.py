"""What a golden image says about itself in Glance: bakery's own properties and every
property SCS-0102 (SCS image metadata, v1.1) makes mandatory, whatever the base image lacks.

Nova copies the base image's properties into a snapshot. Of SCS's mandatory set, bakery
- always sets what describes *this* image and its handling: `image_build_date` (the moment
  the builders started: every update published before it is in), `image_description`,
  `image_source` (`private`: a golden image is nowhere to download), `replace_frequency` (from
  `image.max_age_days`, the longest a rebuild lets a generation live), `uuid_validity`
  (`last-N`, N = `image.keep_released`), `provided_until` (`none`: no promise), and
  `os_purpose` (`appliance`, so that it is never taken for the cloud's generic OS image);
- fills in what describes the content only where the base says nothing: `architecture`,
  `os_distro`, `os_version` (from the image definition), `hw_disk_bus` (`virtio`, what
  Nova's libvirt driver uses when nothing is said), `image_original_user` (the distribution's
  cloud user);
- sets `min_disk` and `min_ram` when it releases the image (Glance fields, not properties:
  Nova's createImage cannot set them): `min_disk` is the builder flavor's disk (the snapshot's
  size), `min_ram` the definition's, else the builder flavor's RAM, never below the base's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..config import Settings
from ..image.definition import LoadedDefinition
from .api import TAG, image_property

# SCS-0102's architecture names, by the Debian names of image definitions.
SCS_ARCHITECTURE = {"amd64": "x86_64", "arm64": "aarch64"}
CLOUD_USER = {"debian": "debian", "ubuntu": "ubuntu"}
# SCS-0102 "Image handling": every property an image must carry (besides min_disk, min_ram).
SCS_MANDATORY = (
    "architecture",
    "os_distro",
    "os_version",
    "hw_disk_bus",
    "replace_frequency",
    "provided_until",
    "uuid_validity",
    "image_source",
    "image_description",
    "image_build_date",
    "image_original_user",
)
REPLACE_FREQUENCIES = ((1, "daily"), (7, "weekly"), (31, "monthly"), (92, "quarterly"))


def replace_frequency(max_age_days: int) -> str:
    """The SCS promise that `image.max_age_days` keeps: the next generation comes at least
    this often."""
    return next((name for days, name in REPLACE_FREQUENCIES if max_age_days <= days), "yearly")


def image_properties(
    settings: Settings,
    loaded: LoadedDefinition,
    build_id: str,
    inputs_hash: str,
    target: Any,
    started: dt.datetime,
) -> dict[str, str]:
    """The snapshot's properties (Nova's createImage metadata): they are added to the base's,
    or replace them."""
    base = target.base_image
    definition = loaded.definition
    properties = {
        TAG: "image",
        "bakery_status": "candidate",
        "bakery_definition": loaded.name,
        "bakery_build_id": build_id,
        "bakery_inputs_hash": inputs_hash,
        "bakery_base_image_id": base.id,
        "bakery_base_build_date": str(image_property(base, "image_build_date") or base.created_at),
        "image_build_date": started.strftime("%Y-%m-%d %H:%M"),
        "image_description": f"bakery golden image {loaded.name} ({build_id})"[:255],
        "image_source": "private",
        "replace_frequency": replace_frequency(settings.image.max_age_days),
        "uuid_validity": f"last-{settings.image.keep_released}",
        "provided_until": "none",
        "os_purpose": "appliance",
    }
    describing = {
        "architecture": SCS_ARCHITECTURE[target.arch],
        "os_distro": definition.base.distribution,
        "os_version": definition.base.release,
        "hw_disk_bus": "virtio",
        "image_original_user": CLOUD_USER[definition.base.distribution],
    }
    properties.update({k: v for k, v in describing.items() if not image_property(base, k)})
    properties.update({f"bakery_{name}": value for name, value in _versions(loaded).items()})
    return properties


def release_fields(loaded: LoadedDefinition, flavor: Any, base: Any) -> dict[str, int]:
    """Glance's own fields, set with `bakery_status=released`."""
    min_ram = loaded.definition.min_ram or flavor.ram or 0
    return {
        "min_disk": max(flavor.disk or 0, base.min_disk or 0),
        "min_ram": max(min_ram, base.min_ram or 0),
    }


def _versions(loaded: LoadedDefinition) -> dict[str, str]:
    c = loaded.definition.components
    versions = {
        "postgresql_major": str(c.postgresql.major),
        "patroni": c.patroni.version,
        "psycopg2": c.psycopg2.version,
    }
    if c.consul is not None:
        versions["consul"] = c.consul.version
    return versions
