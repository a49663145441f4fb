"""What the bake, rebuild, launch and cluster tests share: a two-environment config for the
stack, running the real command line against it, and reading back what exists in the clouds."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import base_config, invoke, merged, write_config

from .outside import ETCD_MEMBERS, LIGHTHOUSE, NEBULA_PORT, LaunchedCluster

DEFINITION = "postgresql14-patroni"


def cluster_config(tmp_path: Path, **changes) -> Path:
    """AZ a = environment e1 (test-env1, az1), b = e2 (test-env2, az2); the seed's topology:
    a Nebula overlay whose lighthouse, and the three etcd members of the DCS (failure domain
    external), are outside both environments (tests/cloud/outside.py). Guests are kept light."""
    config = base_config(tmp_path, dcs="etcd3", overlay=True)
    config["environments"] = {"e1": {"cloud": "test-env1"}, "e2": {"cloud": "test-env2"}}
    for label, env, zone in (("a", "e1", "az1"), ("b", "e2", "az2")):
        az = config["azs"][label]
        az.update(environment=env, network="private", flavor="SCS-1V-2-10", compute_az=zone)
        for key in ("subnet", "security_groups", "addresses"):
            az.pop(key, None)
    overlay_address, public_address = LIGHTHOUSE
    config["overlay"]["lighthouses"] = [
        {"overlay_address": overlay_address, "public_address": f"{public_address}:{NEBULA_PORT}"}
    ]
    config["cluster"]["dcs"]["members"] = [
        {"address": address, "failure_domain": "external"} for address, _ in ETCD_MEMBERS
    ]
    # A replica that lost power leaves the primary's walsender holding its slot until
    # wal_sender_timeout (60 s by default): it streams again that much sooner.
    config["cluster"]["postgresql"]["parameters"] = {
        "shared_buffers": "16MB",
        "max_connections": 30,
        "wal_sender_timeout": "10s",
    }
    # Faster than the defaults (30/10/10), within Patroni's bounds: failovers in about 20 s.
    config["cluster"]["patroni"] = {"ttl": 20, "loop_wait": 2, "retry_timeout": 4}
    config["image"] = {"definition": DEFINITION}
    return write_config(tmp_path / "cluster.yaml", merged(config, **changes))


def cloud_env(cloud) -> dict:
    return {"OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml), "PYTHONWARNINGS": "ignore"}


def run_task(cloud, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return invoke("-f", str(config), *args, env=cloud_env(cloud), timeout=timeout)


def prop(image, key: str):
    value = getattr(image, key, None)
    return value if value is not None else image.properties.get(key)


def own_images(conn) -> list:
    """This project's bakery images: tagged, or carrying bakery's property (a snapshot whose
    tagging never happened would still be found)."""
    return [
        i
        for i in conn.image.images(owner=conn.current_project_id)
        if "bakery" in (i.tags or []) or prop(i, "bakery") == "image"
    ]


def remove_leftovers(conn, image_names: tuple[str, ...] = (), images: bool = True) -> list[str]:
    """Delete every server, bakery port and (unless `images` is false) bakery image and the
    named images of the project; return the servers and ports found, which a test may not
    have left."""
    found = []
    for server in conn.compute.servers():
        found.append(f"server {server.name}")
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=120)
    for port in conn.network.ports():
        if "bakery" in (port.tags or []):
            found.append(f"port {port.name}")
            conn.network.delete_port(port, ignore_missing=True)
    if not images:
        return found
    for image in own_images(conn) + [
        i for i in conn.image.images(owner=conn.current_project_id) if i.name in image_names
    ]:
        conn.image.delete_image(image, ignore_missing=True)
    return found


def end_cluster(cluster: LaunchedCluster, conns, failed: bool) -> None:
    """The end of a module's launched cluster: its guests' files kept when a test failed
    (deleting a server removes its disk), every server and bakery port deleted, the outside
    torn down, and its files removed unless something failed or was left behind."""
    if failed:
        cluster.keep_guest_files()
    for conn in conns:
        remove_leftovers(conn, images=False)
    problems = cluster.teardown()
    if problems or failed:
        print(f"\ncloud tier: files of the outside of {cluster.run_id} in {cluster.base}")
    else:
        cluster.remove_files()
    assert not problems, f"the cluster's outside left things behind: {problems}"
