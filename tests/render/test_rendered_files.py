"""Every rendered file is accepted by the tool that will read it."""

import base64
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bakery.checks import load_hcl
from tests.helpers import PROJECT, invoke
from tests.render.conftest import record_size
from tests.render.validators import (
    cloud_init_schema,
    systemd_calendar,
    validate_patroni,
    validate_pgbackrest,
)


def nodes(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["nodes"]


def node_file(out: Path, node: dict, path: str) -> Path:
    return out / node["name"] / "files" / path.lstrip("/")


def dcs_listeners(config: dict) -> list[tuple[str, int]]:
    dcs = config["cluster"]["dcs"]
    if dcs["type"] == "consul":
        return [("127.0.0.1", 8500)]
    port = dcs.get("etcd3", {}).get("port", 2379)
    return [(m["address"], port) for m in dcs["members"]]


def test_patroni_accepts_every_patroni_yml(rendered):
    _, config, out = rendered
    for node in nodes(out):
        validate_patroni(
            node_file(out, node, "/etc/patroni/patroni.yml"),
            node_file(out, node, "/etc/patroni/patroni.env"),
            dcs_listeners(config),
        )


def test_patroni_validator_is_not_a_rubber_stamp(rendered, tmp_path):
    """The same harness refuses a broken file, so the test above can fail."""
    _, config, out = rendered
    node = nodes(out)[0]
    data = yaml.safe_load(node_file(out, node, "/etc/patroni/patroni.yml").read_text())
    data["postgresql"]["listen"] = 5432
    broken = tmp_path / "patroni.yml"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(AssertionError, match="postgresql.listen 5432 is not a string"):
        validate_patroni(
            broken, node_file(out, node, "/etc/patroni/patroni.env"), dcs_listeners(config)
        )


def test_patroni_4_shape(rendered):
    _, config, out = rendered
    for node in nodes(out):
        text = node_file(out, node, "/etc/patroni/patroni.yml").read_text()
        data = yaml.safe_load(text)
        assert "users" not in data["bootstrap"]
        assert "pg_hba" not in data["bootstrap"]
        hba = data["postgresql"]["pg_hba"]
        assert "host replication replicator 127.0.0.1/32 scram-sha-256" in hba
        assert not any(" md5" in line or "trust" in line for line in hba)
        assert hba[-1].endswith("reject")
        assert data["restapi"]["verify_client"] == "optional"
        assert data["restapi"]["certfile"] and data["ctl"]["cacert"]
        assert data["postgresql"]["parameters"]["ssl"] == "on"
        assert not data["postgresql"]["pgpass"].startswith("/tmp")
        assert "password" not in json.dumps(data["postgresql"]["authentication"])
        assert config["cluster"]["dcs"]["type"] in data


def test_cloud_init_accepts_every_user_data(rendered):
    variant, _, out = rendered
    for node in nodes(out):
        user_data = out / node["name"] / "user-data"
        assert cloud_init_schema(user_data).startswith("Valid cloud-config")
        size = len(base64.b64encode(user_data.read_bytes()))
        assert size == node["user_data_base64_bytes"] < 65535
        record_size(variant, node["name"], size)


def test_user_data_only_writes_files_and_starts_services(rendered):
    _, config, out = rendered
    for node in nodes(out):
        data = yaml.safe_load((out / node["name"] / "user-data").read_text())
        assert set(data) <= {
            "package_update",
            "package_upgrade",
            "ssh_genkeytypes",
            "write_files",
            "runcmd",
        }
        assert data["package_update"] is False and data["package_upgrade"] is False
        # With the Consul DNS forwarding, systemd-resolved lets go of 127.0.0.53 in between.
        restart = (
            [["systemctl", "restart", "systemd-resolved.service"]]
            if "bakery-consul-dns.service" in node["services"]
            else []
        )
        assert data["runcmd"] == [
            ["systemctl", "--no-reload", "enable", *node["services"]],
            *restart,
            ["systemctl", "start", *node["services"]],
        ]
        for entry in data["write_files"]:
            assert isinstance(entry["permissions"], str) and entry["permissions"].startswith("0")
            on_disk = node_file(out, node, entry["path"]).read_text()
            assert entry["content"] == on_disk


def test_consul_hcl_parses_with_the_types_consul_expects(rendered):
    _, config, out = rendered
    if config["cluster"]["dcs"]["type"] != "consul":
        pytest.skip("this variant uses etcd3: no consul.hcl")
    consul = config["cluster"]["dcs"]["consul"]
    for node in nodes(out):
        data = load_hcl(node_file(out, node, "/etc/consul.d/consul.hcl").read_text())
        for key in (
            "datacenter",
            "node_name",
            "data_dir",
            "bind_addr",
            "advertise_addr",
            "client_addr",
            "encrypt",
            "log_level",
        ):
            assert isinstance(data[key], str), key
        assert data["server"] is False and data["leave_on_terminate"] is True
        assert data["retry_join"] == [m["address"] for m in config["cluster"]["dcs"]["members"]]
        assert all(isinstance(a, str) for a in data["retry_join"])
        assert data["client_addr"] == "127.0.0.1"
        ports = data["ports"][0]
        assert isinstance(ports["http"], int) and ports["https"] == -1
        defaults = data["tls"][0]["defaults"][0]
        assert defaults["verify_outgoing"] is True and defaults["verify_incoming"] is False
        assert data["tls"][0]["internal_rpc"][0]["verify_server_hostname"] is True
        auto_encrypt = consul.get("auto_encrypt", True)
        assert ("auto_encrypt" in data) is auto_encrypt
        assert ("cert_file" in defaults) is (not auto_encrypt)
        if auto_encrypt:
            assert data["auto_encrypt"][0]["tls"] is True
        tokens = data["acl"][0]["tokens"][0]
        assert isinstance(tokens["agent"], str) and "default" not in tokens
        paths = [f["path"] for f in node["files"]]
        assert ("/etc/consul.d/tls/client.key" in paths) is (not auto_encrypt)
        # Server certificates never go on database nodes.
        assert not any("server" in p for p in paths)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_verify_with_names_and_usages(rendered):
    _, _, out = rendered
    for node in nodes(out):
        ca = load_cert(node_file(out, node, "/etc/patroni/tls/ca.pem"))
        cert = load_cert(node_file(out, node, "/etc/patroni/tls/node.pem"))
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        consul_names = []
        if "bakery-consul-dns.service" in node["services"]:  # what clients may connect to
            service = "patroni42.service.consul"
            consul_names = [service, f"primary.{service}", f"replica.{service}"]
        assert san.get_values_for_type(x509.DNSName) == [node["name"], *consul_names]
        wanted = {a for a in (node["private_address"], node["overlay_address"]) if a}
        assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == wanted
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert eku == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        key_file = next(f for f in node["files"] if f["path"] == "/etc/patroni/tls/node.key")
        assert key_file["mode"] == "0600"
        client = node_file(out, node, "/etc/consul.d/tls/client.pem")
        if client.exists():
            consul_cert = load_cert(client)
            consul_cert.verify_directly_issued_by(ca)
            names = consul_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert names.value.get_values_for_type(x509.DNSName)[0].startswith("client.")


def test_nebula_certificates_verify(rendered):
    _, config, out = rendered
    if config.get("overlay", {}).get("type") != "nebula":
        pytest.skip("this variant has no overlay")
    for node in nodes(out):
        ca = node_file(out, node, "/etc/nebula/ca.crt")
        crt = node_file(out, node, "/etc/nebula/host.crt")
        subprocess.run(["nebula-cert", "verify", "-ca", str(ca), "-crt", str(crt)], check=True)
        printed = subprocess.run(
            ["nebula-cert", "print", "-json", "-path", str(crt)],
            capture_output=True,
            text=True,
            check=True,
        )
        details = json.loads(printed.stdout)["details"]
        assert details["ips"] == [f"{node['overlay_address']}/22"]
        assert details["name"] == node["name"]
        nebula = yaml.safe_load(node_file(out, node, "/etc/nebula/config.yml").read_text())
        assert nebula["tun"]["dev"] == "nebula1"
        assert nebula["static_host_map"] == {"100.102.0.1": ["192.0.2.10:4242"]}


def test_pgbackrest_conf_matches_the_repository(rendered):
    import configparser

    _, config, out = rendered
    repo = config["cluster"].get("pgbackrest", {}).get("repo", {"type": "posix"})
    for node in nodes(out):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(node_file(out, node, "/etc/pgbackrest/pgbackrest.conf").read_text())
        assert parser.get("patroni42", "pg1-path") == "/var/lib/postgresql/14/patroni"
        if repo["type"] == "s3":
            assert parser.get("global", "repo1-s3-key-secret") == "s3-secret-value"
        patroni = yaml.safe_load(node_file(out, node, "/etc/patroni/patroni.yml").read_text())
        archive = patroni["bootstrap"]["dcs"]["postgresql"]["parameters"].get("archive_command")
        backup = config["cluster"].get("pgbackrest", {})
        if backup.get("archive", repo["type"] == "s3"):
            assert archive == "pgbackrest --stanza=patroni42 archive-push %p"
            assert node["name"] not in archive
            assert patroni["postgresql"]["create_replica_methods"][0] == "pgbackrest"
        else:
            assert archive is None
            assert patroni["postgresql"]["create_replica_methods"] == ["basebackup"]


def test_pgbackrest_reads_every_pgbackrest_conf(rendered):
    """pgBackRest itself parses the file (unknown options and bad values would show)."""
    _, config, out = rendered
    repo = config["cluster"].get("pgbackrest", {}).get("repo", {"type": "posix"})
    names = [repo["endpoint"], f"{repo['bucket']}.{repo['endpoint']}"] if "endpoint" in repo else []
    node = nodes(out)[0]
    conf = node_file(out, node, "/etc/pgbackrest/pgbackrest.conf")
    output = validate_pgbackrest(conf, "patroni42", names)
    assert "stanza: patroni42" in output
    restore = node_file(out, node, "/etc/pgbackrest/restore.conf")
    if config["cluster"].get("restore"):
        stanza = config["cluster"]["restore"]["from_scope"]
        assert f"stanza: {stanza}" in validate_pgbackrest(restore, stanza, names)
    else:
        assert not restore.exists()


def test_pgbackrest_validator_is_not_a_rubber_stamp(rendered, tmp_path):
    _, _, out = rendered
    conf = node_file(out, nodes(out)[0], "/etc/pgbackrest/pgbackrest.conf").read_text()
    broken = tmp_path / "pgbackrest.conf"
    broken.write_text(conf.replace("[global]\n", "[global]\nrepo1-retention-fool=2\n"))
    with pytest.raises(AssertionError, match="invalid option 'repo1-retention-fool'"):
        validate_pgbackrest(broken, "patroni42", [])


def test_backup_timers_get_a_schedule_systemd_reads(rendered):
    _, config, out = rendered
    for node in nodes(out):
        timers = [s for s in node["services"] if s.endswith(".timer")]
        dropins = [f["path"] for f in node["files"] if f["path"].endswith("bakery-schedule.conf")]
        assert dropins == [f"/etc/systemd/system/{t}.d/bakery-schedule.conf" for t in timers]
        for path in dropins:
            lines = node_file(out, node, path).read_text().splitlines()
            assert lines[-2] == "OnCalendar="  # the image's calendar is replaced, not added to
            systemd_calendar(lines[-1].removeprefix("OnCalendar="))
    if config["cluster"].get("pgbackrest", {}).get("repo", {}).get("type") == "s3":
        assert timers == ["bakery-backup-full.timer", "bakery-backup-diff.timer"]


def test_systemd_calendar_check_is_not_a_rubber_stamp():
    with pytest.raises(AssertionError, match="systemd refuses"):
        systemd_calendar("Sunday at one")


def test_the_shipped_example_renders_within_nova_limits(tmp_path):
    example = PROJECT / "examples/seed-two-az.yaml"
    out = tmp_path / "out"
    result = invoke(
        "-f",
        str(example),
        "ca",
        "render",
        "--az",
        "a",
        "--az",
        "b",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for node in nodes(out):
        cloud_init_schema(out / node["name"] / "user-data")
        record_size("examples/seed-two-az.yaml", node["name"], node["user_data_base64_bytes"])
        assert node["user_data_base64_bytes"] < 65535
    assert [n["name"] for n in nodes(out)] == ["prod1-postgresql-0", "prod4-postgresql-0"]
