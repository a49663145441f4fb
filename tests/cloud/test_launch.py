"""`invoke launch` against the loopback OpenStack: nodes in az1 and az2 from the image that
`invoke bake` released, each carrying its own bundle as user-data; or nothing at all."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from cryptography import x509

from bakery.cloud.launch import launch
from bakery.config import load_settings
from bakery.node.bundle import NodePaths
from tests.helpers import error_lines

from .workflow import cluster_config, own_images, remove_leftovers, run_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]


@pytest.fixture
def envs(cloud, released):
    conns = {name: cloud.connect(name) for name in cloud.clouds}
    yield conns
    for conn in conns.values():
        remove_leftovers(conn, images=False)  # the module's released images stay


def _launch_config(cloud, tmp_path, **changes):
    """The stack's cluster config, with its CA made by `invoke ca` as a user would."""
    config = cluster_config(tmp_path, **changes)
    result = run_task(cloud, config, "ca")
    assert result.returncode == 0, result.stderr
    return config


def _bakery_ports(conn) -> list:
    return [p for p in conn.network.ports() if "bakery" in (p.tags or [])]


def _settings(config_path):
    import yaml

    return load_settings(yaml.safe_load(config_path.read_text())["bakery"])


def test_launch_starts_each_node_in_its_az_with_its_own_bundle(
    cloud, envs, released, tmp_path, monkeypatch
):
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.clouds_yaml))
    config = _launch_config(cloud, tmp_path, **{"azs.a.security_groups": ["default"]})
    # Without the outside (lighthouse and DCS, test_cluster.py) these nodes never form a
    # cluster: the launch's own part, without its wait.
    result = launch(_settings(config), ["a", "b"], log=lambda line: None, wait=False)

    admin = cloud.connect(cloud.admin_cloud)
    expected = {
        "e1-postgresql-0": ("test-env1", "az1", "compute1", "192.0.2.0/24"),
        "e2-postgresql-0": ("test-env2", "az2", "compute2", "198.51.100.0/24"),
    }
    assert sorted(n.name for n in result.nodes) == sorted(expected)
    bundles = {b.node.name: b for b in result.bundles}
    for node in result.nodes:
        env, zone, host, subnet = expected[node.name]
        conn = envs[env]
        server = conn.compute.get_server(node.server_id)
        assert (server.status, server.availability_zone) == ("ACTIVE", zone)
        assert admin.compute.get_server(server.id).compute_host == host
        assert server.image["id"] == released[env].id
        assert server.metadata["bakery_cluster"] == "patroni42"
        (port,) = _bakery_ports(conn)
        assert port.device_id == server.id
        default = conn.network.find_security_group("default", project_id=conn.current_project_id)
        assert port.security_group_ids == [default.id]  # given (a) or Neutron's default (b)
        assert port.fixed_ips[0]["ip_address"] == node.address
        assert ipaddress.ip_address(node.address) in ipaddress.ip_network(subnet)
        # The guest received exactly the bundle rendered for the address of its port.
        user_data = bundles[node.name].user_data.encode()
        console = conn.compute.get_server_console_output(server)["output"]
        digest = hashlib.sha256(user_data).hexdigest()
        assert f"user-data {len(user_data)} bytes sha256={digest}" in console
        # ... and its certificate names the address Neutron gave the port.
        cert_pem = next(
            f.content for f in bundles[node.name].files if f.path == NodePaths.node_cert
        )
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address(node.address) in sans.get_values_for_type(x509.IPAddress)

    # Launch is idempotent: what exists is reported and left alone.
    again = run_task(cloud, config, "launch", "--az", "a", "--az", "b", "--no-wait")
    assert again.returncode == 0, again.stderr
    assert "launched 0 node(s), 2 existed" in again.stdout
    assert "e1-postgresql-0 (" in again.stdout and "exists: left alone" in again.stdout
    for conn in envs.values():
        assert len(list(conn.compute.servers())) == 1 and len(_bakery_ports(conn)) == 1


def test_bad_input_anywhere_creates_nothing(cloud, envs, tmp_path):
    env1 = envs["test-env1"]
    network = env1.network.find_network("private")
    squatter = env1.network.create_port(
        name="squatter", network_id=network.id, fixed_ips=[{"ip_address": "192.0.2.50"}]
    )
    try:
        config = _launch_config(
            cloud, tmp_path, **{"azs.a.addresses": ["192.0.2.50"], "azs.b.key_pair": "nobody"}
        )
        result = run_task(cloud, config, "launch", "--az", "a", "--az", "b")
    finally:
        env1.network.delete_port(squatter)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "bakery: nothing was created; fix these first:",
        f"  AZ a (environment e1): address 192.0.2.50 is taken by port {squatter.id}",
        "  AZ b (environment e2): no key pair 'nobody'",
    ]
    for conn in envs.values():
        assert list(conn.compute.servers()) == [] and _bakery_ports(conn) == []


def test_a_refused_server_removes_every_port_and_server_of_the_launch(cloud, envs, tmp_path):
    config = _launch_config(cloud, tmp_path)
    admin = cloud.connect(cloud.admin_cloud)
    project = envs["test-env2"].current_project_id
    admin.set_compute_quotas(project, instances=0)
    try:
        result = run_task(cloud, config, "launch", "--az", "a", "--az", "b")
    finally:
        admin.delete_compute_quotas(project)
    assert result.returncode == 1
    assert "environment e2: creating server e2-postgresql-0" in result.stderr
    assert "Quota exceeded" in result.stderr
    for conn in envs.values():
        assert list(conn.compute.servers()) == [] and _bakery_ports(conn) == []


def test_nodes_of_one_cluster_never_mix_generations(cloud, envs, released, tmp_path):
    config = _launch_config(cloud, tmp_path)
    newer = run_task(cloud, config, "bake", "--environment", "e1")
    assert newer.returncode == 0, newer.stderr
    try:
        result = run_task(cloud, config, "launch", "--az", "a", "--az", "b")
        assert result.returncode == 1
        assert "the newest released images differ (AZ a: " in result.stderr
        for conn in envs.values():
            assert list(conn.compute.servers()) == [] and _bakery_ports(conn) == []
    finally:
        env1 = envs["test-env1"]
        for image in own_images(env1):
            if image.id != released["test-env1"].id:
                env1.image.delete_image(image)
