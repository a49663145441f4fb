"""Hostile values in passwords, secrets and parameters cannot change any file's structure.

Each example renders the whole cluster with hostile values, parses every file back with the
parser its reader uses, and compares its shape with a render made of harmless values: the
same keys everywhere, and every hostile value arrives intact where it belongs.
"""

from __future__ import annotations

import configparser

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakery.ca import create_missing
from bakery.checks import load_hcl, parse_envfile
from bakery.config import load_settings
from bakery.errors import BakeryError
from bakery.node.render import render_cluster
from tests.helpers import base_config, merged

SPICE = [
    "'",
    '"',
    ": ",
    "#",
    "{{",
    "}}",
    "*",
    "&",
    "!",
    "ü",
    "€",
    "\\",
    "$",
    "`",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "|",
    ">",
    "\u2028",
    "--",
    "@",
    "%",
    "'; DROP ROLE admin; --",
]
# Everything every target format can carry: no control characters (nor surrogates).
printable = st.characters(exclude_categories=["Cc", "Cs"])
hostile = st.lists(
    st.one_of(st.sampled_from(SPICE), st.text(printable, min_size=1, max_size=4)),
    min_size=1,
    max_size=8,
).map("".join)
# HCL has no escape for an interpolation opener: such values are refused (test below).
hcl_safe = hostile.filter(lambda s: "${" not in s and "%{" not in s and s.strip())


def shape(value):
    """The structure of parsed data without its leaf values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def render_all(tmp, passwords: dict[str, str], parameter: str, gossip: str, token: str):
    raw = merged(
        base_config(tmp),
        **{"cluster.postgresql.parameters": {"application_name": parameter, "work_mem": "4MB"}},
    )
    config = load_settings(raw)
    create_missing(config)
    for path, value in ((tmp / "consul/gossip.key", gossip), (tmp / "consul/acl.token", token)):
        path.write_text(value)
        path.chmod(0o600)
    environ = {f"BAKERY_{k.upper()}_PASSWORD": v for k, v in passwords.items()}
    return {
        b.node.name: {f.path: f.content for f in b.files} | {"user-data": b.user_data}
        for b in render_cluster(config, ["a", "b"], environ)
    }


def parsed(files: dict[str, str]) -> dict:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(files["/etc/pgbackrest/pgbackrest.conf"])
    return {
        "patroni": yaml.safe_load(files["/etc/patroni/patroni.yml"]),
        "env": parse_envfile(files["/etc/patroni/patroni.env"]),
        "consul": load_hcl(files["/etc/consul.d/consul.hcl"]),
        "nebula": yaml.safe_load(files["/etc/nebula/config.yml"]),
        "pgbackrest": {s: dict(ini[s]) for s in ini.sections()},
        "user-data": yaml.safe_load(files["user-data"]),
    }


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    passwords=st.fixed_dictionaries(
        {n: hostile for n in ("superuser", "replication", "rewind", "restapi", "admin")}
    ),
    parameter=hostile,
    gossip=hcl_safe,
    token=hcl_safe,
)
def test_hostile_values_keep_every_file_in_shape(
    tmp_path_factory, passwords, parameter, gossip, token
):
    baseline_dir = tmp_path_factory.mktemp("baseline")
    baseline = render_all(baseline_dir, dict.fromkeys(passwords, "harmless"), "app", "k", "t")
    result = render_all(tmp_path_factory.mktemp("hostile"), passwords, parameter, gossip, token)
    for node, files in result.items():
        expected = parsed(baseline[node])
        got = parsed(files)
        for name in expected:
            assert shape(got[name]) == shape(expected[name]), name
        env = got["env"]
        assert env["PATRONI_SUPERUSER_PASSWORD"] == passwords["superuser"]
        assert env["PATRONI_RESTAPI_PASSWORD"] == passwords["restapi"]
        params = got["patroni"]["bootstrap"]["dcs"]["postgresql"]["parameters"]
        assert params["application_name"] == parameter
        assert got["consul"]["encrypt"] == gossip.strip()
        assert got["consul"]["acl"][0]["tokens"][0]["agent"] == token.strip()
        written = {f["path"]: f["content"] for f in got["user-data"]["write_files"]}
        assert written == {k: v for k, v in files.items() if k != "user-data"}


@pytest.mark.parametrize(
    ("where", "value", "reason"),
    [
        ("password", "in\nline", "control character or line break"),
        ("password", "tab\there", "control character or line break"),
        ("gossip", "k${x}", "interpolation"),
        ("token", "t%{x}", "interpolation"),
        ("token", "bell\x07", "control character"),
    ],
)
def test_what_a_format_cannot_carry_is_refused_without_showing_it(tmp_path, where, value, reason):
    passwords = dict.fromkeys(("superuser", "replication", "rewind", "restapi", "admin"), "ok")
    gossip = token = "fine"
    if where == "password":
        passwords["rewind"] = value
    elif where == "gossip":
        gossip = value
    else:
        token = value
    with pytest.raises(BakeryError, match=reason) as caught:
        render_all(tmp_path, passwords, "app", gossip, token)
    assert value.strip() not in str(caught.value)
