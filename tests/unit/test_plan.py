"""Node planning: names, addresses, overlay allocation, the two-AZ DCS safety check."""

import ipaddress

import pytest

from bakery.config import Settings, load_settings
from bakery.errors import ConfigError
from bakery.node import plan
from tests.helpers import DELETE, base_config, merged


def settings_of(raw):
    return load_settings(raw)


def test_names_follow_the_tutorial(tmp_path):
    nodes = plan.make_plan(settings_of(base_config(tmp_path)), ["a", "b"]).nodes
    assert [n.name for n in nodes] == ["prod1-postgresql-0", "prod4-postgresql-0"]
    assert [str(n.overlay_address) for n in nodes] == ["100.102.1.36", "100.102.1.37"]
    assert nodes[0].address == nodes[0].overlay_address


def test_names_do_not_depend_on_the_chosen_azs(tmp_path):
    raw = merged(base_config(tmp_path), **{"azs.b.environment": "prod1"})
    settings = settings_of(raw)
    only_b = plan.make_plan(settings, ["b"]).nodes
    assert [n.name for n in only_b] == ["prod1-postgresql-1"]


def test_overlay_addresses_are_stable_across_renders_and_new_azs(tmp_path):
    settings = settings_of(base_config(tmp_path))
    first = plan.make_plan(settings, ["b"])
    plan.save(settings, first)
    both = plan.make_plan(settings, ["a", "b"]).nodes
    # b was allocated first and keeps its address; a gets the next free one.
    assert {n.name: str(n.overlay_address) for n in both} == {
        "prod4-postgresql-0": "100.102.1.36",
        "prod1-postgresql-0": "100.102.1.37",
    }


def test_lighthouse_addresses_are_skipped(tmp_path):
    raw = merged(base_config(tmp_path), **{"overlay.first_node_address": "100.102.0.1"})
    nodes = plan.make_plan(settings_of(raw), ["a"]).nodes
    assert str(nodes[0].overlay_address) == "100.102.0.2"


def test_exhausted_overlay_is_reported_and_nothing_saved(tmp_path):
    raw = merged(
        base_config(tmp_path),
        **{
            "overlay.cidr": "100.102.0.0/30",
            "overlay.first_node_address": "100.102.0.2",
            "overlay.lighthouses": [{"overlay_address": "100.102.0.1", "public_address": "h:1"}],
        },
    )
    settings = settings_of(raw)
    with pytest.raises(ConfigError) as caught:
        plan.make_plan(settings, ["a", "b"])
    (problem,) = caught.value.problems
    assert str(problem).startswith("bakery.overlay.cidr: 100.102.0.0/30 is exhausted")
    assert "prod4-postgresql-0" in str(problem)
    assert not (settings.state_dir / "overlay-addresses.json").exists()


def test_unknown_az_label(tmp_path):
    with pytest.raises(ConfigError) as caught:
        plan.make_plan(settings_of(base_config(tmp_path)), ["a", "c"])
    assert [str(p) for p in caught.value.problems] == [
        "--az: 'c' is not an AZ label of this config; known: a, b"
    ]


def test_without_overlay_every_node_needs_an_address(tmp_path):
    raw = merged(base_config(tmp_path, overlay=False), **{"azs.b.addresses": []})
    with pytest.raises(ConfigError) as caught:
        plan.make_plan(settings_of(raw), ["a", "b"])
    (problem,) = caught.value.problems
    assert str(problem).startswith("bakery.azs.b.addresses: node prod4-postgresql-0 has no address")


def test_launch_supplies_private_addresses(tmp_path):
    raw = merged(base_config(tmp_path, overlay=False), **{"azs.b.addresses": []})
    given = {"prod4-postgresql-0": ipaddress.IPv4Address("10.20.1.99")}
    nodes = plan.make_plan(settings_of(raw), ["b"], given).nodes
    assert nodes[0].address == ipaddress.IPv4Address("10.20.1.99")


@pytest.mark.parametrize(
    ("domains", "bad_azs"),
    [
        (["external", "external", "external"], []),
        (["a", "b", "external"], []),
        (["a", "a", "b"], ["a"]),
        (["a", "b"], ["a", "b"]),
        (["a", "a", "a", "b", "external"], ["a"]),
    ],
)
def test_the_dcs_must_survive_the_loss_of_any_az(tmp_path, domains, bad_azs):
    members = [{"address": f"10.0.0.{i}", "failure_domain": d} for i, d in enumerate(domains)]
    raw = merged(base_config(tmp_path), **{"cluster.dcs.members": members})
    settings = Settings.model_validate(raw)  # the structure alone, before topology checks
    problems = plan.dcs_survival_problems(settings, ["a", "b"])
    assert [p.message.split("'")[1] for p in problems] == bad_azs
    # One AZ alone cannot survive its own loss anyway: nothing to check.
    assert plan.dcs_survival_problems(settings, ["a"]) == []
    # The config is refused as a whole, whichever --az a render or launch names.
    if bad_azs:
        with pytest.raises(ConfigError) as caught:
            load_settings(raw)
        assert "no majority" in str(caught.value)


def test_the_dcs_members_overlay_addresses_are_not_handed_out(tmp_path):
    members = [{"address": "100.102.0.2", "failure_domain": "external"}]
    raw = merged(
        base_config(tmp_path),
        **{"cluster.dcs.members": members, "overlay.first_node_address": DELETE},
    )
    nodes = plan.make_plan(settings_of(raw), ["a"]).nodes
    # .1 is the lighthouse, .2 the DCS member.
    assert str(nodes[0].overlay_address) == "100.102.0.3"
