"""Fill the running stack through its APIs: catalog, users, the two environments, clouds.yaml.

Each environment stands for one of pluscloud open's separate clouds: its own project (so its
private images are invisible to the other), user, network + subnet, default security group and
a private base image with SCS-style properties. Flavors and the AZs az1/az2 are shared.
"""

from __future__ import annotations

import datetime
import io
import time

import openstack
import yaml

from .config import COMPUTE_HOSTS
from .layout import PORTS, REGION, Layout, write_private

ENVIRONMENTS = {
    "test-env1": {"project": "env1", "secret": "env1", "cidr": "192.0.2.0/24"},
    "test-env2": {"project": "env2", "secret": "env2", "cidr": "198.51.100.0/24"},
}
ADMIN_CLOUD = "test-admin"
SERVICE_USERS = ("glance", "nova", "placement", "neutron")
CATALOG = {
    # service name: (type, port key, path)
    "glance": ("image", "glance", ""),
    "placement": ("placement", "placement", ""),
    "nova": ("compute", "nova", "/v2.1"),
    "neutron": ("network", "neutron", ""),
}
# SCS standard flavors (name: vcpus, ram MiB, disk GB); Nova refuses 0-disk image boots.
FLAVORS = {"SCS-1V-2-10": (1, 2048, 10), "SCS-2V-4-20": (2, 4096, 20), "SCS-4V-8-50": (4, 8192, 50)}
BASE_IMAGE = "Debian 12"
BASE_IMAGE_PROPERTIES = {
    "os_distro": "debian",
    "os_version": "12",
    "os_purpose": "generic",
    "architecture": "x86_64",
    "hw_disk_bus": "scsi",
    "hw_scsi_model": "virtio-scsi",
    "hw_rng_model": "virtio",
    "hw_qemu_guest_agent": "yes",
    "image_build_date": "2026-09-01",
    "image_original_user": "debian",
    "image_source": "https://cloud.debian.org/images/cloud/bookworm/",
    "image_description": "https://www.debian.org/",
    "replace_frequency": "quarterly",
    "provided_until": "none",
    "uuid_validity": "last-3",
    "hotfix_hours": "0",
}


def _auth(layout: Layout, user: str, password: str, project: str) -> dict:
    return {
        "auth_url": layout.url("keystone"),
        "username": user,
        "password": password,
        "project_name": project,
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    }


def connect(
    layout: Layout, user: str, password: str, project: str
) -> openstack.connection.Connection:
    return openstack.connect(
        load_yaml_config=False,
        load_envvars=False,
        auth=_auth(layout, user, password, project),
        region_name=REGION,
        interface="public",
        identity_api_version="3",
    )


def admin(layout: Layout) -> openstack.connection.Connection:
    return connect(layout, "admin", layout.secrets()["admin"], "admin")


def identity(layout: Layout) -> None:
    """Projects, users, roles, services and endpoints: needs Keystone only."""
    secrets = layout.secrets()
    conn = admin(layout)
    ident = conn.identity
    roles = {role.name: role for role in ident.roles()}
    for name in ("member", "reader", "service"):
        if name not in roles:
            roles[name] = ident.create_role(name=name)
    domain = ident.find_domain("default")
    projects = {}
    for name in ("service", *(env["project"] for env in ENVIRONMENTS.values())):
        projects[name] = ident.find_project(name, domain_id=domain.id) or ident.create_project(
            name=name, domain_id=domain.id
        )
    users = {name: ("service", ("admin", "service"), secrets["service"]) for name in SERVICE_USERS}
    for env in ENVIRONMENTS.values():
        user = f"{env['project']}-user"
        users[user] = (env["project"], ("member",), secrets[env["secret"]])
    for name, (project, role_names, password) in users.items():
        user = ident.find_user(name, domain_id=domain.id) or ident.create_user(
            name=name,
            password=password,
            domain_id=domain.id,
            default_project_id=projects[project].id,
        )
        for role in role_names:
            ident.assign_project_role_to_user(projects[project], user, roles[role])
    existing = {service.name for service in ident.services()}
    for name, (kind, port_key, path) in CATALOG.items():
        if name in existing:
            continue
        service = ident.create_service(name=name, type=kind, is_enabled=True)
        url = f"http://127.0.0.1:{PORTS[port_key]}{path}"
        for interface in ("public", "internal"):
            ident.create_endpoint(
                service_id=service.id, interface=interface, url=url, region_id=REGION
            )


def wait_for_service(
    layout: Layout, binary: str, hosts, since: datetime.datetime, timeout: float = 120
) -> None:
    """Until the Nova service `binary` on each of `hosts` has reported since `since` (UTC): a
    restarted stack still shows the previous run's heartbeats as `up` for a minute."""
    conn = admin(layout)
    deadline = time.monotonic() + timeout
    while True:
        fresh = {
            s.host
            for s in conn.compute.services()
            if s.binary == binary
            and s.state == "up"
            and s.updated_at
            and datetime.datetime.fromisoformat(s.updated_at).replace(tzinfo=None) >= since
        }
        if set(hosts) <= fresh:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{binary} not up after {timeout} s: only on {sorted(fresh)}")
        time.sleep(0.5)


def wait_for_hypervisors(layout: Layout, timeout: float = 60) -> None:
    """Until both hosts are listed as hypervisors (needs their host mappings: discover_hosts)."""
    conn = admin(layout)
    deadline = time.monotonic() + timeout
    while True:
        nodes = {h.name for h in conn.compute.hypervisors()}
        if set(COMPUTE_HOSTS) <= nodes:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"hypervisors missing after {timeout} s: only {sorted(nodes)}")
        time.sleep(0.5)


def resources(layout: Layout) -> dict:
    """Flavors, AZ aggregates and the two environments; returns what provisioned.json holds."""
    wait_for_hypervisors(layout)
    conn = admin(layout)
    for name, (vcpus, ram, disk) in FLAVORS.items():
        if not conn.compute.find_flavor(name):
            flavor = conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk)
            conn.compute.create_flavor_extra_specs(flavor, {"scs:name-v2": name})
    for host, zone in COMPUTE_HOSTS.items():
        aggregate = conn.compute.find_aggregate(zone)
        if aggregate is None:
            aggregate = conn.compute.create_aggregate(name=zone, availability_zone=zone)
        if host not in (aggregate.hosts or []):
            conn.compute.add_host_to_aggregate(aggregate, host)
    secrets = layout.secrets()
    envs = {}
    for cloud, env in ENVIRONMENTS.items():
        project = env["project"]
        user_conn = connect(layout, f"{project}-user", secrets[env["secret"]], project)
        envs[cloud] = _environment(user_conn, env)
    _write_clouds(layout)
    return {
        "clouds": list(ENVIRONMENTS),
        "admin_cloud": ADMIN_CLOUD,
        "clouds_yaml": str(layout.clouds_yaml),
        "admin_clouds_yaml": str(layout.admin_clouds_yaml),
        "availability_zones": sorted(set(COMPUTE_HOSTS.values())),
        "flavors": list(FLAVORS),
        "base_image": BASE_IMAGE,
        "environments": envs,
    }


def _environment(conn: openstack.connection.Connection, env: dict) -> dict:
    net = conn.network
    network = net.find_network("private") or net.create_network(name="private")
    subnet = net.find_subnet("private-subnet") or net.create_subnet(
        name="private-subnet", network_id=network.id, ip_version=4, cidr=env["cidr"]
    )
    # Listing creates the project's default security group, as on a real cloud.
    group = next(g for g in net.security_groups(project_id=conn.current_project_id)
                 if g.name == "default")  # fmt: skip
    image = conn.image.find_image(BASE_IMAGE)
    if image is None:
        image = upload_base_image(conn, BASE_IMAGE)
        conn.image.update_image(image.id, is_protected=True)
    wait_for_image(conn, image.id)
    return {
        "project": env["project"],
        "project_id": conn.current_project_id,
        "network_id": network.id,
        "subnet_id": subnet.id,
        "cidr": subnet.cidr,
        "gateway": subnet.gateway_ip,
        "security_group_id": group.id,
        "image_id": image.id,
    }


def upload_base_image(conn: openstack.connection.Connection, name: str, **properties: str):
    """A private image with the SCS-style properties of a distribution's cloud image (and any
    extra `properties`); a few bytes stand in for the disk."""
    return conn.image.create_image(
        name=name,
        data=io.BytesIO(b"bakery test base image\n"),
        disk_format="raw",
        container_format="bare",
        visibility="private",
        disable_vendor_agent=False,
        **{**BASE_IMAGE_PROPERTIES, **properties},
    )


def wait_for_image(conn: openstack.connection.Connection, image_id: str, timeout: float = 60):
    """Until the image is active; an image that is neither on its way there nor active is an
    error at once."""
    deadline = time.monotonic() + timeout
    while (image := conn.image.get_image(image_id)).status != "active":
        if image.status not in ("queued", "saving"):
            raise RuntimeError(f"image {image_id} is {image.status}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"image {image_id} still {image.status} after {timeout} s")
        time.sleep(0.3)
    return image


def _cloud(layout: Layout, user: str, password: str, project: str) -> dict:
    return {
        "auth": _auth(layout, user, password, project),
        "region_name": REGION,
        "interface": "public",
        "identity_api_version": 3,
    }


def _write_clouds(layout: Layout) -> None:
    secrets = layout.secrets()
    clouds = {
        cloud: _cloud(layout, f"{env['project']}-user", secrets[env["secret"]], env["project"])
        for cloud, env in ENVIRONMENTS.items()
    }
    write_private(layout.clouds_yaml, yaml.safe_dump({"clouds": clouds}, sort_keys=False))
    admin_cloud = {ADMIN_CLOUD: _cloud(layout, "admin", secrets["admin"], "admin")}
    write_private(layout.admin_clouds_yaml, yaml.safe_dump({"clouds": admin_cloud}))
