"""What a golden image says about itself: SCS-0102's mandatory set whatever the base lacks,
the base's description where it has one, bakery's own handling always."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from bakery.cloud.metadata import (
    SCS_MANDATORY,
    image_properties,
    release_fields,
    replace_frequency,
)
from bakery.config import load_settings
from bakery.image.definition import load_definition
from tests.helpers import base_config

STARTED = dt.datetime(2026, 11, 26, 3, 4, 5, tzinfo=dt.UTC)


def _properties(tmp_path, base_properties: dict, arch="amd64", **image) -> dict:
    config = base_config(tmp_path)
    config["image"] = image
    settings = load_settings(config)
    base = SimpleNamespace(id="base-id", created_at="2026-09-01T00:00:00Z", properties={})
    base.__dict__.update(base_properties)
    target = SimpleNamespace(base_image=base, arch=arch)
    loaded = load_definition("postgresql14-patroni")
    return image_properties(settings, loaded, "build-1", "hash", target, STARTED)


def test_a_bare_base_still_gives_every_mandatory_property(tmp_path):
    properties = _properties(tmp_path, {}, arch="arm64")
    assert set(SCS_MANDATORY) <= set(properties)
    assert properties["architecture"] == "aarch64"
    assert (properties["os_distro"], properties["os_version"]) == ("debian", "12")
    assert properties["hw_disk_bus"] == "virtio"
    assert properties["image_original_user"] == "debian"
    assert properties["image_build_date"] == "2026-11-26 03:04"


def test_what_the_base_says_of_its_content_is_kept_bakery_s_handling_replaces_the_rest(tmp_path):
    base = {
        "hw_disk_bus": "scsi",
        "image_original_user": "admin",
        "image_source": "https://cloud.debian.org/",
        "replace_frequency": "quarterly",
        "uuid_validity": "last-3",
        "os_purpose": "generic",
    }
    properties = _properties(tmp_path, base, max_age_days=30, keep_released=5)
    # Not set: Nova copies the base's own into the snapshot.
    assert "hw_disk_bus" not in properties and "image_original_user" not in properties
    assert properties["image_source"] == "private"
    assert properties["replace_frequency"] == "monthly"
    assert properties["uuid_validity"] == "last-5"
    assert properties["os_purpose"] == "appliance"  # never the cloud's generic image


@pytest.mark.parametrize(
    ("days", "frequency"),
    [
        (1, "daily"),
        (7, "weekly"),
        (8, "monthly"),
        (31, "monthly"),
        (92, "quarterly"),
        (93, "yearly"),
    ],
)
def test_the_replace_frequency_is_the_promise_max_age_days_keeps(days, frequency):
    assert replace_frequency(days) == frequency


def test_min_ram_comes_from_the_definition_else_the_builder_flavor_never_below_the_base():
    loaded = load_definition("postgresql14-patroni")
    flavor = SimpleNamespace(ram=2048, disk=10)
    bare = SimpleNamespace(min_ram=0, min_disk=0)
    assert release_fields(loaded, flavor, bare) == {"min_disk": 10, "min_ram": 1024}
    demanding = SimpleNamespace(min_ram=4096, min_disk=20)
    assert release_fields(loaded, flavor, demanding) == {"min_disk": 20, "min_ram": 4096}
    unsaid = load_definition("local-test")
    assert unsaid.definition.min_ram is None
    assert release_fields(unsaid, flavor, bare)["min_ram"] == 2048
