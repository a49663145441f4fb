"""Smoke test of the cloud tier: both environments, both AZs, the guest driver, snapshots."""

from __future__ import annotations

import base64
import json
import time

import openstack.exceptions
import pytest

from .provision import BASE_IMAGE, BASE_IMAGE_PROPERTIES, wait_for_image

pytestmark = [
    pytest.mark.slow,
    # openstacksdk 4.x warns about its own coming API changes on almost every call.
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]
FLAVOR = "SCS-1V-2-10"
BUILDER_USER_DATA = base64.b64encode(b"#!/bin/sh\necho 'BAKERY-RESULT {...}'\npoweroff\n").decode()


def _boot(conn, name: str, zone: str, metadata: dict, user_data: str | None = None):
    extra = {"user_data": user_data} if user_data else {}
    return conn.compute.create_server(
        name=name,
        image_id=conn.image.find_image(BASE_IMAGE, ignore_missing=False).id,
        flavor_id=conn.compute.find_flavor(FLAVOR, ignore_missing=False).id,
        networks=[{"uuid": conn.network.find_network("private", ignore_missing=False).id}],
        availability_zone=zone,
        metadata=metadata,
        **extra,
    )


def _console(conn, server) -> list[str]:
    return conn.compute.get_server_console_output(server)["output"].splitlines()


def _results(lines: list[str]) -> list[dict]:
    return [
        json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("BAKERY-RESULT ")
    ]


def _prop(image, key: str):
    """An image property, whether openstacksdk models it as an attribute or not."""
    return image.properties.get(key, getattr(image, key, None))


def _delete_servers(conn, servers) -> None:
    for server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for server in servers:
        conn.compute.wait_for_delete(server, interval=0.5, wait=60)


def test_environments_through_clouds_yaml(cloud):
    assert len(cloud.clouds) == 2
    projects = set()
    for name in cloud.clouds:
        conn = cloud.connect(name)
        projects.add(conn.current_project_id)
        assert conn.network.find_network("private") is not None
        assert conn.network.find_subnet("private-subnet") is not None
        groups = [g.name for g in conn.network.security_groups(project_id=conn.current_project_id)]
        assert "default" in groups
        image = conn.image.find_image(BASE_IMAGE, ignore_missing=False)
        assert image.owner == conn.current_project_id and image.visibility == "private"
        for key, value in BASE_IMAGE_PROPERTIES.items():
            assert _prop(image, key) == value, key
        assert conn.compute.find_flavor(FLAVOR) is not None
        zones = {z.name for z in conn.compute.availability_zones()}
        assert {"az1", "az2"} <= zones
    assert len(projects) == 2


def test_boot_in_both_azs_snapshot_and_isolation(cloud):
    env1, env2 = (cloud.connect(name) for name in cloud.clouds)
    admin = cloud.connect(cloud.admin_cloud)
    builder = {"bakery_build_id": "smoke-1"}
    servers = [
        _boot(env1, "smoke-az1", "az1", builder, BUILDER_USER_DATA),
        _boot(env2, "smoke-az2", "az2", {"bakery_build_id": "smoke-2"}, BUILDER_USER_DATA),
    ]
    snapshot = None
    try:
        for conn, server, zone, host in zip(
            (env1, env2), servers, ("az1", "az2"), ("compute1", "compute2"), strict=True
        ):
            server = conn.compute.wait_for_server(server, status="SHUTOFF", interval=0.5, wait=120)
            assert server.availability_zone == zone
            assert admin.compute.get_server(server.id).compute_host == host
        lines = _console(env1, servers[0])
        assert _results(lines) == [{"status": "ok", "build_id": "smoke-1", "manifest": {}}]
        assert any(line.startswith("bakery-guest: user-data ") for line in lines)

        snapshot = env1.compute.create_server_image(servers[0], name="smoke-snapshot")
        image = wait_for_image(env1, snapshot.id)
        for key in ("os_distro", "os_version", "image_build_date", "os_purpose"):
            assert _prop(image, key) == BASE_IMAGE_PROPERTIES[key], key
        assert _prop(image, "image_type") == "snapshot"
        # Private images of one environment are invisible from the other.
        with pytest.raises(openstack.exceptions.NotFoundException):
            env2.image.get_image(image.id)
        assert image.id not in {i.id for i in env2.image.images()}
    finally:
        _delete_servers(env1, servers[:1])
        _delete_servers(env2, servers[1:])
        if snapshot is not None:
            env1.image.delete_image(snapshot.id, ignore_missing=True)
    for conn in (env1, env2):
        assert list(conn.compute.servers()) == []
        assert [i.name for i in conn.image.images(owner=conn.current_project_id)] == [BASE_IMAGE]


def test_guest_error_paths(cloud):
    conn = cloud.connect(cloud.clouds[0])
    cases = {
        mode: _boot(conn, f"mode-{mode}", "az1", {"bakery_test_mode": mode})
        for mode in ("fail", "garbage", "hang")
    }
    # Not a builder (no bakery_* metadata, no result line in its user-data): keeps running.
    cases["node"] = _boot(conn, "plain-node", "az2", {"role": "db"})
    try:
        for mode in ("fail", "garbage"):
            conn.compute.wait_for_server(cases[mode], status="SHUTOFF", interval=0.5, wait=120)
        for mode in ("hang", "node"):
            conn.compute.wait_for_server(cases[mode], status="ACTIVE", interval=0.5, wait=120)
        failed = _results(_console(conn, cases["fail"]))
        assert [r["status"] for r in failed] == ["failed"] and failed[0]["build_id"] == "test"
        garbage = _console(conn, cases["garbage"])
        assert _results(garbage) == [] and len(garbage) > 3
        time.sleep(3)  # well past the guest's 1 s delay
        assert conn.compute.get_server(cases["hang"].id).status == "ACTIVE"
        assert _console(conn, cases["hang"]) == []
        assert conn.compute.get_server(cases["node"].id).status == "ACTIVE"
        assert _results(_console(conn, cases["node"])) == []
    finally:
        _delete_servers(conn, list(cases.values()))
