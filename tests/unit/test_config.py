"""Configuration: the example is valid; bad input yields every problem with its field path."""

from pathlib import Path

import pytest
import yaml

from bakery.config import load_settings
from bakery.errors import ConfigError
from tests.helpers import DELETE, PROJECT, base_config, merged


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(raw)
    return [str(p) for p in caught.value.problems]


def test_the_shipped_example_is_valid():
    raw = yaml.safe_load((PROJECT / "examples/seed-two-az.yaml").read_text())["bakery"]
    settings = load_settings(raw)
    assert settings.cluster.scope == "patroni42"
    assert settings.cluster.namespace == "terra42"
    assert settings.cluster.dcs.consul.datacenter == "de-west"
    assert [settings.azs[a].environment for a in ("a", "b")] == ["prod1", "prod4"]
    assert settings.overlay.type == "nebula"
    assert len(settings.cluster.dcs.members) == 3


def test_missing_section_is_reported():
    assert problems_of(None) == ["bakery: section missing: give a config with a 'bakery:' key"]


def test_every_structural_problem_is_reported_at_once(tmp_path):
    raw = merged(
        base_config(tmp_path),
        **{
            "azs.a.flavour": "typo",
            "azs.b.nodes": "two",
            "cluster.patroni": {"ttl": 10},
            "cluster.postgresql.major": 9,
            "pki.ca_cert": DELETE,
        },
    )
    found = problems_of(raw)
    assert "bakery.azs.a.flavour: unknown key (check the spelling; see examples/)" in found
    assert any(p.startswith("bakery.azs.b.nodes: ") and "'two'" in p for p in found)
    assert any(p.startswith("bakery.cluster.patroni.ttl: ") and "20" in p for p in found)
    assert any(p.startswith("bakery.cluster.postgresql.major: ") and "13" in p for p in found)
    assert "bakery.pki.ca_cert: required, but missing" in found
    assert len(found) == 5


def test_patroni_timing_rule_names_the_values(tmp_path):
    raw = merged(base_config(tmp_path), **{"cluster.patroni": {"ttl": 20, "retry_timeout": 10}})
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.patroni: loop_wait + 2 * retry_timeout = 30")


def test_hostile_names_are_refused(tmp_path):
    raw = merged(
        base_config(tmp_path),
        **{"cluster.scope": 'x"\n: y', "cluster.dcs.consul.datacenter": "de west"},
    )
    found = problems_of(raw)
    assert any(p.startswith("bakery.cluster.scope: ") for p in found)
    assert any(p.startswith("bakery.cluster.dcs.consul.datacenter: ") for p in found)


def test_parameter_with_line_break_is_refused(tmp_path):
    raw = merged(base_config(tmp_path), **{"cluster.postgresql.parameters": {"a": "x\ny"}})
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.postgresql.parameters: ")
    assert "line break" in problem


def test_references_and_topology_are_checked(tmp_path):
    raw = merged(
        base_config(tmp_path),
        **{
            "azs.b.environment": "prod9",
            "cluster.dcs.members": [
                {"address": "100.102.1.30", "failure_domain": "c"},
                {"address": "100.102.1.30", "failure_domain": "external"},
            ],
            "cluster.dcs.etcd3": {"port": 2379},
        },
    )
    found = problems_of(raw)
    assert "bakery.azs.b.environment: 'prod9' is not an environment; known: prod1, prod4" in found
    assert any(p.startswith("bakery.cluster.dcs.members.0.failure_domain: 'c'") for p in found)
    assert "bakery.cluster.dcs.members: a member address appears twice" in found
    assert any(p.startswith("bakery.cluster.dcs.etcd3: set, but") for p in found)


def test_consul_section_is_required_for_consul(tmp_path):
    raw = merged(base_config(tmp_path), **{"cluster.dcs.consul": DELETE})
    assert problems_of(raw) == [
        "bakery.cluster.dcs.consul: required when type is 'consul' (at least datacenter)"
    ]


def test_overlay_overlapping_a_subnet_is_refused(tmp_path):
    raw = merged(base_config(tmp_path), **{"azs.a.subnet": "100.102.1.0/24", "azs.a.addresses": []})
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.overlay.cidr: 100.102.0.0/22 overlaps bakery.azs.a.subnet")


def test_overlay_fields_are_checked(tmp_path):
    raw = merged(
        base_config(tmp_path),
        **{
            "overlay.first_node_address": "100.103.0.1",
            "overlay.lighthouses": [{"overlay_address": "10.9.9.9", "public_address": "h:1"}],
            "overlay.ca_key": DELETE,
        },
    )
    found = problems_of(raw)
    assert "bakery.overlay.ca_key: required when overlay.type is 'nebula'" in found
    assert any(
        p.startswith("bakery.overlay.lighthouses.0.overlay_address: 10.9.9.9") for p in found
    )
    assert any(p.startswith("bakery.overlay.first_node_address: 100.103.0.1") for p in found)


def test_overlay_settings_without_overlay_are_contradictions(tmp_path):
    config = base_config(tmp_path)
    raw = merged(config, **{"overlay.type": "none"})
    found = problems_of(raw)
    assert "bakery.overlay.cidr: set, but overlay.type is 'none'" in found
    assert "bakery.overlay.lighthouses: set, but overlay.type is 'none'" in found


def test_secret_source_needs_exactly_one_origin(tmp_path):
    raw = merged(base_config(tmp_path), **{"cluster.dcs.consul.gossip_key": {}})
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.dcs.consul.gossip_key: give exactly one of")


def test_addresses_must_fit_the_az(tmp_path):
    raw = merged(
        base_config(tmp_path), **{"azs.a.addresses": ["10.10.1.20", "10.10.9.1"], "azs.a.nodes": 2}
    )
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.azs.a: addresses ['10.10.9.1'] are outside subnet")


def test_paths_are_paths(tmp_path):
    settings = load_settings(base_config(tmp_path))
    assert isinstance(settings.state_dir, Path)


def test_one_cloud_and_region_is_one_environment(tmp_path):
    raw = merged(base_config(tmp_path), **{"environments.prod4.cloud": "prod1"})
    assert problems_of(raw) == [
        "bakery.environments.prod4: same cloud 'prod1' and region as environment 'prod1': "
        "give each cloud (and region) one environment"
    ]
    load_settings(merged(raw, **{"environments.prod4.region": "north"}))  # two regions: fine
