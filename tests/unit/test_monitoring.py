"""Monitoring settings, what the bundle says about who may scrape, and the job status metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from bakery.ca import create_missing
from bakery.config import load_settings
from bakery.errors import BakeryError, ConfigError
from bakery.node import monitoring
from bakery.node.bundle import pg_hba
from bakery.node.render import render_cluster
from tests.helpers import PROJECT, base_config, merged

JOB_METRICS = PROJECT / "scripts/exporters/files/bakery-job-metrics"


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(raw)
    return [str(p) for p in caught.value.problems]


def bundles(tmp_path, **changes):
    settings = load_settings(merged(base_config(tmp_path), **changes))
    create_missing(settings)
    return {b.node.name: b for b in render_cluster(settings, ["a", "b"], {})}


def files_of(bundle) -> dict[str, str]:
    return {f.path: f.content for f in bundle.files}


def test_contradictions_are_reported_with_their_field_paths(tmp_path):
    found = problems_of(
        merged(
            base_config(tmp_path, dcs="consul", overlay=False),
            **{
                "monitoring": {"listen": "overlay", "networks": []},
                "cluster.dcs.consul.acl_token": None,
                "cluster.dcs.consul.dns_token": {"env": "DNS_TOKEN"},
            },
        )
    )
    assert (
        "bakery.monitoring.listen: 'overlay', but overlay.type is 'none': use 'private' "
        "(or leave it unset)"
    ) in found
    assert "bakery.cluster.dcs.consul.dns_token: set, but acl_token is not: ACLs are off" in found


def test_empty_networks_with_exporters_on_is_refused(tmp_path):
    assert problems_of(merged(base_config(tmp_path), **{"monitoring.networks": []})) == [
        "bakery.monitoring.networks: empty: nobody could scrape; set monitoring.exporters: "
        "false instead"
    ]
    load_settings(
        merged(base_config(tmp_path), **{"monitoring": {"exporters": False, "networks": []}})
    )


def test_monitor_role_lines_come_before_the_allowed_networks(tmp_path):
    settings = load_settings(
        merged(base_config(tmp_path), **{"monitoring.networks": ["10.9.0.0/24"]})
    )
    lines = pg_hba(["100.102.0.0/22"], monitoring.pg_hba_lines(settings))
    monitor = [i for i, line in enumerate(lines) if " monitor " in line]
    allowed = lines.index("hostssl all all 100.102.0.0/22 scram-sha-256")
    assert [lines[i] for i in monitor] == [
        "hostssl all monitor 10.9.0.0/24 scram-sha-256",
        "host all monitor 0.0.0.0/0 reject",
        "host all monitor ::/0 reject",
    ]
    assert max(monitor) < allowed
    assert lines.index("host all all 127.0.0.1/32 scram-sha-256") < min(monitor)


def test_exporters_listen_on_the_overlay_and_admit_the_monitoring_networks(tmp_path):
    rendered = bundles(tmp_path, **{"monitoring.networks": ["100.102.3.0/24"]})
    node = rendered["prod1-postgresql-0"]
    files = files_of(node)
    env = files[monitoring.ENV_FILE]
    assert 'NODE_EXPORTER_LISTEN="100.102.1.36:9100"' in env
    assert 'POSTGRES_EXPORTER_LISTEN="100.102.1.36:9187"' in env
    assert "elements = { 100.102.3.0/24 }" in files[monitoring.GUARD_FILE]
    nebula = yaml.safe_load(files["/etc/nebula/config.yml"])
    assert [r for r in nebula["firewall"]["inbound"] if "cidr" in r] == [
        {"port": 9100, "proto": "tcp", "cidr": "100.102.3.0/24"},
        {"port": 9187, "proto": "tcp", "cidr": "100.102.3.0/24"},
    ]
    assert node.services[-4:] == monitoring.SERVICES
    # The password file holds the monitor's password and nothing else; the env file none.
    password = (tmp_path / "state/secrets/monitor").read_text().strip()
    assert files[monitoring.PASSWORD_FILE] == password + "\n"
    assert password not in env


def test_exporters_can_listen_on_the_private_address(tmp_path):
    rendered = bundles(tmp_path, **{"monitoring.listen": "private"})
    env = files_of(rendered["prod4-postgresql-0"])[monitoring.ENV_FILE]
    assert 'NODE_EXPORTER_LISTEN="10.20.1.20:9100"' in env


def test_private_listening_needs_private_addresses(tmp_path):
    with pytest.raises(ConfigError) as caught:
        bundles(tmp_path, **{"monitoring.listen": "private", "azs.b.addresses": []})
    (problem,) = caught.value.problems
    assert str(problem).startswith("bakery.azs.b.addresses: node prod4-postgresql-0 has no private")
    assert not (tmp_path / "state/secrets").exists()  # refused before anything was written


def test_exporters_off_leaves_nothing_of_them(tmp_path):
    rendered = bundles(tmp_path, **{"monitoring.exporters": False})
    for bundle in rendered.values():
        assert not any(p.startswith("/etc/bakery/monitoring") for p in files_of(bundle))
        assert not set(monitoring.SERVICES) & set(bundle.services)
        nebula = yaml.safe_load(files_of(bundle)["/etc/nebula/config.yml"])
        assert not [r for r in nebula["firewall"]["inbound"] if "cidr" in r]


def test_a_monitor_password_the_file_cannot_carry_is_refused_without_showing_it(tmp_path):
    settings = load_settings(base_config(tmp_path))
    create_missing(settings)
    with pytest.raises(BakeryError, match="monitor password") as caught:
        render_cluster(settings, ["a"], {"BAKERY_MONITOR_PASSWORD": " padded "})
    assert "padded" not in str(caught.value)


def test_prometheus_target_lists(tmp_path):
    settings = load_settings(
        merged(base_config(tmp_path), **{"cluster.patroni.maximum_lag_on_failover": 4096})
    )
    create_missing(settings)
    rendered = render_cluster(settings, ["a", "b"], {})
    nodes = [(b.node, f"{b.node.address}:8008") for b in rendered]
    files = monitoring.prometheus_files(settings, nodes, "CA")
    assert json.loads(files["patroni.json"])[0] == {
        "targets": ["100.102.1.36:8008"],
        "labels": {"az": "a", "environment": "prod1"},
    }
    assert json.loads(files["node.json"])[1] == {
        "targets": ["100.102.1.37:9100"],
        "labels": {
            "scope": "patroni42",
            "name": "prod4-postgresql-0",
            "az": "b",
            "environment": "prod4",
        },
    }
    rule = yaml.safe_load(files["thresholds.rules.yml"])["groups"][0]["rules"][0]
    assert rule == {
        "record": "bakery_patroni_maximum_lag_on_failover_bytes",
        "expr": "vector(4096)",
        "labels": {"scope": "patroni42"},
    }


def job_metrics(tmp_path, statuses: dict[str, str]) -> str:
    status = tmp_path / "status"
    status.mkdir()
    for name, text in statuses.items():
        (status / f"{name}.json").write_text(text)
    out = tmp_path / "bakery_jobs.prom"
    subprocess.run([sys.executable, str(JOB_METRICS), str(status), str(out)], check=True)
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    return out.read_text()


def test_job_status_files_become_metrics(tmp_path):
    text = job_metrics(
        tmp_path,
        {
            "backup": '{"ok": true, "at": "2026-12-01T10:00:00Z", "detail": "full"}',
            "stanza-create": '{"ok": false, "at": "2026-12-01T09:00:00+00:00", "detail": "x"}',
            'we"ird': "not json",
        },
    )
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        'bakery_job_ok{bakery_job="backup"} 1',
        'bakery_job_last_run_timestamp_seconds{bakery_job="backup"} 1796119200',
        'bakery_job_ok{bakery_job="stanza-create"} 0',
        'bakery_job_last_run_timestamp_seconds{bakery_job="stanza-create"} 1796115600',
        'bakery_job_ok{bakery_job="we\\"ird"} 0',
    ]
    assert "# TYPE bakery_job_ok gauge" in text


def test_no_status_directory_gives_an_empty_list(tmp_path):
    out = tmp_path / "bakery_jobs.prom"
    subprocess.run(
        [sys.executable, str(JOB_METRICS), str(tmp_path / "missing"), str(out)], check=True
    )
    assert [line for line in out.read_text().splitlines() if not line.startswith("#")] == []
