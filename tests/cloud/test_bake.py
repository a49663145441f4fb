"""`invoke bake` and `invoke rebuild` against the loopback OpenStack: two environments, the
guest-playing driver.

Every test runs the real command line with the stack's clouds.yaml and checks what exists in
both environments afterwards: released images with their properties, or nothing at all.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bakery.image.definition import load_definition
from tests.helpers import INVOKE, PROJECT, error_lines, invoke

from .counting_proxy import CountingProxy, summary
from .provision import BASE_IMAGE_PROPERTIES, upload_base_image, wait_for_image
from .workflow import (
    DEFINITION,
    cloud_env,
    cluster_config,
    own_images,
    prop,
    remove_leftovers,
    run_task,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]
TEST_BASE = "bakery test base"  # a base image whose guest misbehaves as its property says


@pytest.fixture
def envs(cloud):
    """Both environments' connections; afterwards everything a test made is removed, and the
    test fails if the bake left a server behind."""
    conns = {name: cloud.connect(name) for name in cloud.clouds}
    yield conns
    leftovers = {name: remove_leftovers(conn, (TEST_BASE,)) for name, conn in conns.items()}
    assert leftovers == {name: [] for name in conns}


def _bake(cloud, config: Path, *args: str) -> subprocess.CompletedProcess:
    return run_task(cloud, config, "bake", *args)


def _test_base(conn, mode: str):
    """A base image like the stack's, whose guest behaves as `mode` (see the guest driver)."""
    image = upload_base_image(conn, TEST_BASE, bakery_test_mode=mode)
    return wait_for_image(conn, image.id)


def test_bake_releases_one_verified_image_per_environment(cloud, envs, tmp_path):
    result = _bake(cloud, cluster_config(tmp_path))
    assert result.returncode == 0, result.stderr + result.stdout
    loaded = load_definition(DEFINITION)
    build_ids = set()
    for conn in envs.values():
        images = own_images(conn)
        assert len(images) == 1
        image = images[0]
        build_ids.add(image.name)
        assert image.status == "active"
        assert prop(image, "bakery_status") == "released"
        assert prop(image, "bakery_definition") == DEFINITION
        assert prop(image, "bakery_build_id") == image.name
        assert prop(image, "bakery_inputs_hash") == loaded.inputs_hash()
        assert prop(image, "bakery_patroni") == "4.1.5"
        assert prop(image, "bakery_base_build_date") == BASE_IMAGE_PROPERTIES["image_build_date"]
        # Inherited from the base image, as on a real cloud; the build date is the bake's.
        for key in ("os_distro", "os_version", "hw_disk_bus", "hw_qemu_guest_agent"):
            assert prop(image, key) == BASE_IMAGE_PROPERTIES[key], key
        assert prop(image, "image_build_date") != BASE_IMAGE_PROPERTIES["image_build_date"]
        assert list(conn.compute.servers()) == []  # the builder is gone
    assert len(build_ids) == 1  # one build, released in both
    (build_id,) = build_ids
    assert f"baked {build_id} in 2 environment(s)" in result.stdout


# SCS-0102 v1.1: what every image must carry (besides min_disk and min_ram), with the values
# its conformance check accepts.
SCS_MANDATORY = {
    "architecture": r"x86_64|aarch64|risc-v",
    "os_distro": r"debian",
    "os_version": r"12",
    "hw_disk_bus": r"virtio|scsi",
    "replace_frequency": r"yearly|quarterly|monthly|weekly|daily|critical_bug|never",
    "provided_until": r"none|notice|\d{4}-\d\d-\d\d",
    "uuid_validity": r"none|notice|forever|last-\d+|\d{4}-\d\d-\d\d",
    "image_source": r"private|https?://\S+",
    "image_description": r".+",
    "image_build_date": r"\d{4}-\d\d-\d\d( \d\d:\d\d(:\d\d)?)?",
    "image_original_user": r"debian",
}


def test_released_images_carry_every_scs_mandatory_property_whatever_the_base_lacks(
    cloud, envs, tmp_path
):
    for conn in envs.values():  # a base image with no property at all, not even min_disk
        bare = conn.image.create_image(
            name=TEST_BASE,
            data=io.BytesIO(b"bare base"),
            disk_format="raw",
            container_format="bare",
            visibility="private",
        )
        wait_for_image(conn, bare.id)
    result = _bake(cloud, cluster_config(tmp_path, **{"image.base_image": {"name": TEST_BASE}}))
    assert result.returncode == 0, result.stderr + result.stdout
    definition = load_definition(DEFINITION).definition
    for name, conn in envs.items():
        (image,) = own_images(conn)
        assert prop(image, "bakery_status") == "released"
        for key, allowed in SCS_MANDATORY.items():
            assert re.fullmatch(allowed, str(prop(image, key) or "")), (name, key, prop(image, key))
        assert image.min_disk == 10  # the builder flavor SCS-1V-2-10's disk
        assert image.min_ram == definition.min_ram
        assert prop(image, "os_purpose") == "appliance"
        built = dt.datetime.strptime(prop(image, "image_build_date"), "%Y-%m-%d %H:%M")
        registered = dt.datetime.fromisoformat(image.created_at.replace("Z", ""))
        assert built <= registered  # SCS: never later than the image's registration


def test_bad_input_in_any_environment_creates_nothing(cloud, envs, tmp_path):
    before = {name: len(list(conn.image.images())) for name, conn in envs.items()}
    config = cluster_config(
        tmp_path,
        **{"environments.e2.builder": {"flavor": "no-such-flavor"}, "azs.a.compute_az": "az9"},
    )
    result = _bake(cloud, config)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert lines[0] == "bakery: nothing was created; fix these first:"
    assert "environment e1: compute AZ 'az9' is not available; available: az1, az2" in lines[1]
    assert "environment e2: no flavor 'no-such-flavor'" in lines[2]
    for name, conn in envs.items():
        assert list(conn.compute.servers()) == []
        assert len(list(conn.image.images())) == before[name]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("fail", "the build failed (bakery_test_mode=fail)"),
        ("garbage", "the builder stopped without a result line"),
        ("drift", "the image's manifest does not match: patroni version is '0.0.0+drift'"),
    ],
)
def test_a_failure_in_one_environment_releases_nothing_anywhere(
    cloud, envs, tmp_path, mode, expected
):
    _test_base(envs["test-env1"], "ok")
    _test_base(envs["test-env2"], mode)
    result = _bake(cloud, cluster_config(tmp_path, **{"image.base_image": {"name": TEST_BASE}}))
    assert result.returncode == 1
    assert f"environment e2: {expected}" in result.stderr
    for conn in envs.values():
        assert list(conn.compute.servers()) == []
        assert own_images(conn) == []  # e1's good image is removed with the rest


def _bake_until_building(cloud, envs, config: Path) -> subprocess.Popen:
    """A bake whose builders exist in both environments (and never finish: `hang`)."""
    for conn in envs.values():
        _test_base(conn, "hang")
    proc = subprocess.Popen(
        [str(INVOKE), "--search-root", str(PROJECT), "-f", str(config), "bake"],
        env={**os.environ, **cloud_env(cloud)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # SIGINT may be ignored by whoever started the tests (a shell's background job): the
        # bake must see the Ctrl-C the test sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not all(list(conn.compute.servers()) for conn in envs.values()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the builders were not created: {proc.communicate()[0]}")
        time.sleep(0.5)
    return proc


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "bakery: interrupted"), (signal.SIGTERM, 143, "bakery: terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupt_while_building_removes_everything(cloud, envs, tmp_path, sig, code, said):
    config = cluster_config(tmp_path, **{"image.base_image": {"name": TEST_BASE}})
    proc = _bake_until_building(cloud, envs, config)
    try:
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, output
    assert said in output
    for conn in envs.values():
        assert list(conn.compute.servers()) == []
        assert [p.name for p in conn.network.ports() if "bakery" in (p.tags or [])] == []
        assert own_images(conn) == []


def test_what_a_killed_bake_left_is_tagged_and_the_next_rebuild_reports_it(cloud, envs, tmp_path):
    config = cluster_config(tmp_path, **{"image.base_image": {"name": TEST_BASE}})
    proc = _bake_until_building(cloud, envs, config)
    proc.kill()  # SIGKILL: no cleanup at all, as when a CI runner is lost
    proc.communicate(timeout=60)
    left = {}
    for name, conn in envs.items():
        (server,) = conn.compute.servers()
        assert "bakery" in server.tags
        (port,) = conn.network.ports(name=server.name)  # made first, before the server
        assert sorted(port.tags) == ["bakery", "bakery-builder"], name
        left[name] = (server, port)
        # Nova binds the port while the server builds on after its bake died.
        deadline = time.monotonic() + 120
        while conn.network.get_port(port.id).device_id != server.id:
            assert time.monotonic() < deadline, f"{name}: the builder never got its port"
            time.sleep(0.5)
    # Long before the grace period would allow deleting them, the next rebuild names them.
    result = _rebuild(cloud, config, "--dry-run")
    for label, cloud_name in (("e1", "test-env1"), ("e2", "test-env2")):
        server, port = left[cloud_name]
        assert (
            f"{label}: builder {port.name} (port {port.id}, server {server.id}) of a bake still "
            "running, or killed (removable from "
        ) in result.stdout
    for conn in envs.values():  # and leaves them alone
        assert len(list(conn.compute.servers())) == 1
        remove_leftovers(conn)  # what the fixture would otherwise count against the test


def _rebuild(cloud, config: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_task(cloud, config, "rebuild", *args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def _released(conn) -> dict[str, str]:
    """image name -> bakery_status, of this project's bakery images."""
    return {i.name: prop(i, "bakery_status") for i in own_images(conn)}


def test_rebuild_bakes_only_when_due_and_retires_safely(cloud, envs, tmp_path):
    config = cluster_config(tmp_path, **{"image.keep_released": 1})
    env1, env2 = envs["test-env1"], envs["test-env2"]

    first = _rebuild(cloud, config)
    assert "e1: no released image of postgresql14-patroni" in first.stdout
    (gen1,) = _released(env1)
    assert _released(env2) == {gen1: "released"}

    again = _rebuild(cloud, config, "--dry-run")
    assert "every environment's newest released image is current" in again.stdout
    assert _released(env1) == {gen1: "released"}

    # A node runs from generation 1 in e1: a forced rebuild retires it there, but keeps it.
    node = env1.compute.create_server(
        name="node-on-gen1",
        image_id=own_images(env1)[0].id,
        flavor_id=env1.compute.find_flavor("SCS-1V-2-10").id,
        networks=[{"uuid": env1.network.find_network("private").id}],
    )
    env1.compute.wait_for_server(node, status="ACTIVE", interval=1, wait=120)
    forced = _rebuild(cloud, config, "--force")
    assert f"e1: {gen1} stays while servers run from it" in forced.stdout
    (gen2,) = set(_released(env2))
    assert gen2 != gen1
    assert _released(env1) == {gen1: "retired", gen2: "released"}

    # Once nothing runs from it, the next rebuild deletes it without baking.
    env1.compute.delete_server(node)
    env1.compute.wait_for_delete(node, interval=1, wait=120)
    last = _rebuild(cloud, config)
    assert "baked" not in last.stdout
    assert f"e1: deleted {gen1}" in last.stdout
    assert _released(env1) == {gen2: "released"} == _released(env2)

    # Nothing left to do: one authentication and at most two reads per environment, counted
    # by a proxy in front of the APIs.
    with CountingProxy() as proxy:
        counted = proxy.write_clouds_yaml(cloud.clouds_yaml, tmp_path / "counted-clouds.yaml")
        env = {**cloud_env(cloud), "OS_CLIENT_CONFIG_FILE": str(counted)}
        quiet = invoke("-f", str(config), "rebuild", env=env)
        requests = proxy.take()
    assert quiet.returncode == 0, quiet.stderr
    assert "every environment's newest released image is current" in quiet.stdout
    assert sum(r.is_authentication for r in requests) == 2, summary(requests)
    assert len(requests) <= 2 + 2 * 2, summary(requests)
