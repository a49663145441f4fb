"""Parse every rendered file back and check that it says what was meant.

A template override, or a value that slipped past the quoting filters, fails here, before a
file leaves the process. The deeper checks by the real tools (patroni --validate-config,
cloud-init schema) run in the render test tier.
"""

from __future__ import annotations

import configparser
from typing import Any

import yaml

from .errors import BakeryError
from .templating import plain


def _fail(what: str, detail: str) -> BakeryError:
    return BakeryError(f"rendered {what} is wrong: {detail} (check template overrides)")


def _expect(what: str, found: Any, wanted: Any, where: str) -> None:
    if found != wanted:
        raise _fail(what, f"{where} is {found!r}, expected {wanted!r}")


def _load_yaml(what: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise _fail(what, f"not valid YAML ({error})") from None


def check_patroni(text: str, context: dict) -> None:
    what = f"patroni.yml of {context['node'].name}"
    data = _load_yaml(what, text)
    if not isinstance(data, dict):
        raise _fail(what, "not a mapping")
    cluster = context["cluster"]
    _expect(what, data.get("name"), context["node"].name, "name")
    _expect(what, data.get("scope"), cluster.scope, "scope")
    _expect(
        what,
        data.get("bootstrap", {}).get("dcs"),
        plain(context["bootstrap_dcs"]),
        "bootstrap.dcs",
    )
    postgresql = data.get("postgresql", {})
    _expect(what, postgresql.get("pg_hba"), context["pg_hba"], "postgresql.pg_hba")
    _expect(
        what, postgresql.get("parameters"), context["local_parameters"], "postgresql.parameters"
    )
    if "users" in data.get("bootstrap", {}):
        raise _fail(what, "bootstrap.users was removed in Patroni 4")
    if _has_key(data, "password"):
        raise _fail(what, "a password appears in patroni.yml (they belong in patroni.env)")
    if context["dcs"].type not in data:
        raise _fail(what, f"no {context['dcs'].type} section")


def _has_key(data: Any, key: str) -> bool:
    if isinstance(data, dict):
        return key in data or any(_has_key(v, key) for v in data.values())
    if isinstance(data, list):
        return any(_has_key(v, key) for v in data)
    return False


def check_envfile(text: str, context: dict) -> None:
    what = f"patroni.env of {context['node'].name}"
    values = parse_envfile(text)
    passwords = context["passwords"]
    for name, key in (
        ("superuser", "PATRONI_SUPERUSER_PASSWORD"),
        ("replication", "PATRONI_REPLICATION_PASSWORD"),
        ("rewind", "PATRONI_REWIND_PASSWORD"),
        ("restapi", "PATRONI_RESTAPI_PASSWORD"),
    ):
        if values.get(key) != passwords[name].value:
            raise _fail(what, f"{key} does not carry the {name} password")


def check_node_env(text: str, context: dict) -> None:
    node = context["node"]
    what = f"node.env of {node.name}"
    values = parse_envfile(text)
    _expect(what, values.get("BAKERY_NODE_NAME"), node.name, "BAKERY_NODE_NAME")
    url = f"https://{node.address}:{context['restapi_port']}"
    _expect(what, values.get("BAKERY_RESTAPI_URL"), url, "BAKERY_RESTAPI_URL")


def parse_envfile(text: str) -> dict[str, str]:
    """Parse KEY="value" lines as systemd does for the values bakery writes (and KEY='value',
    as Debian's /etc/default files have them)."""
    values = {}
    # systemd splits on "\n" only; str.splitlines would also split on U+0085, U+2028, ...
    for line in text.split("\n"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        if not sep:
            raise BakeryError(f"environment file line without '=': {key[:20]!r}")
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            body, out, i = raw[1:-1], [], 0
            while i < len(body):
                if body[i] == "\\" and i + 1 < len(body):
                    i += 1
                out.append(body[i])
                i += 1
            values[key] = "".join(out)
        elif raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
            values[key] = raw[1:-1]  # single quotes: literal (Debian's /etc/default files)
        else:
            values[key] = raw
    return values


def check_exporters_env(text: str, context: dict) -> None:
    """The exporters listen where the bundle says and read the password from its file."""
    what = f"exporters.env of {context['node'].name}"
    values = parse_envfile(text)
    exporters = context["exporters"]
    for key, port in (
        ("NODE_EXPORTER_LISTEN", exporters.node_port),
        ("POSTGRES_EXPORTER_LISTEN", exporters.postgres_port),
    ):
        _expect(what, values.get(key), f"{exporters.listen}:{port}", key)
    _expect(
        what, values.get("DATA_SOURCE_PASS_FILE"), exporters.password_file, "DATA_SOURCE_PASS_FILE"
    )
    if "DATA_SOURCE_PASS" in values or "DATA_SOURCE_NAME" in values:
        raise _fail(what, "a password or a DSN appears in it (the password has its own file)")


def check_pgbackrest(
    text: str, what: str, stanza: str, options: dict[str, str], pg_path: str
) -> None:
    """A pgBackRest file: the [global] options meant (some are secrets: never shown), and the
    stanza's data directory."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option names
    try:
        parser.read_string(text)
    except configparser.Error as error:
        raise _fail(what, f"not a valid INI file ({error})") from None
    for name, value in options.items():
        if parser.get("global", name, fallback=None) != value:
            raise _fail(what, f"global.{name} is not what was meant")
    if not parser.has_section(stanza):
        raise _fail(what, f"no [{stanza}] stanza")
    _expect(what, parser.get(stanza, "pg1-path", fallback=None), pg_path, f"{stanza}.pg1-path")


def check_nebula(text: str, context: dict) -> None:
    what = f"nebula config of {context['node'].name}"
    data = _load_yaml(what, text)
    _expect(what, data.get("static_host_map"), context["static_host_map"], "static_host_map")
    _expect(
        what,
        data.get("lighthouse", {}).get("hosts"),
        context["lighthouse_hosts"],
        "lighthouse.hosts",
    )
    _expect(what, data.get("tun", {}).get("dev"), "nebula1", "tun.dev")
    inbound = data.get("firewall", {}).get("inbound") or []
    scoped = [rule for rule in inbound if "cidr" in rule]
    _expect(what, scoped, context["monitoring_rules"], "firewall.inbound rules with a cidr")


def load_hcl(text: str) -> dict:
    """Parse HCL to plain values (strings unquoted, blocks as lists of dicts)."""
    import hcl2
    from hcl2 import SerializationOptions

    options = SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False
    )
    return hcl2.loads(text, serialization_options=options)


def check_consul(text: str, context: dict) -> None:
    what = f"consul.hcl of {context['node'].name}"
    try:
        data = load_hcl(text)
    except Exception as error:  # python-hcl2 raises lark errors of several kinds
        raise _fail(what, f"not valid HCL ({error})") from None
    consul = context["consul"]
    _expect(what, data.get("datacenter"), consul.datacenter, "datacenter")
    _expect(what, data.get("node_name"), context["node"].name, "node_name")
    _expect(what, data.get("retry_join"), context["retry_join"], "retry_join")
    _expect(what, data.get("server"), False, "server")
    if context["gossip_key"] is not None:
        _expect(what, data.get("encrypt"), context["gossip_key"].value, "encrypt")


def check_user_data(text: str, write_files: list[dict], runcmd: list[list[str]]) -> None:
    what = "user-data"
    if not text.startswith("#cloud-config\n"):
        raise _fail(what, "does not start with #cloud-config")
    data = _load_yaml(what, text)
    _expect(what, data.get("write_files"), write_files, "write_files")
    _expect(what, data.get("runcmd"), runcmd, "runcmd")
