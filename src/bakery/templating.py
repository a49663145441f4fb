"""One Jinja2 environment for every rendered file, and the quoting filters it needs.

Undefined values are errors (StrictUndefined). A user's override directory is searched before
the project's own `templates/` and `cloud-init/`. Values never enter a file by bare
interpolation: each format has its filter, which quotes or refuses what cannot be represented.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import yaml

from .errors import BakeryError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIRS = (PROJECT_ROOT / "templates", PROJECT_ROOT / "cloud-init")


class _Dumper(yaml.SafeDumper):
    """Safe YAML with readable multi-line strings (literal blocks where YAML allows them)."""


def plain(value: Any) -> Any:
    """Turn addresses and paths into strings so they dump as plain YAML scalars."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # raises: a missing value is never rendered
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv4Network | Path):
        return str(value)
    return value


# YAML readers treat these as line breaks even inside quotes; only "..." escapes them safely.
_YAML_BREAKS = frozenset("\x85\u2028\u2029")


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if _YAML_BREAKS.intersection(data):
        style = '"'
    else:
        # A literal block that must keep trailing line breaks ("|+") ends its document with
        # "...", which breaks the YAML it is nested in: such strings go double-quoted.
        literal = "\n" in data and data.strip("\n") and not data.endswith("\n\n")
        style = "|" if literal else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml_inline(value: Any) -> str:
    """A YAML value on one line: scalars double-quoted, collections in flow style."""
    value = plain(value)
    if isinstance(value, str):
        text = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=True)
    else:
        text = yaml.dump(
            value,
            Dumper=_Dumper,
            default_flow_style=True,
            width=float("inf"),
            allow_unicode=True,
            sort_keys=False,
        )
    return text.removesuffix("\n...\n").rstrip("\n")


def to_yaml_block(value: Any) -> str:
    """A YAML document fragment in block style (for whole sections such as write_files)."""
    return yaml.dump(
        plain(value), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    ).rstrip("\n")


def to_yaml_nested(value: Any, indent: int) -> str:
    """A mapping or list as a block under the current key: `key:{{ v | yaml_nested(2) }}`."""
    value = plain(value)
    if not value:
        return " " + to_yaml_inline(value)
    block = yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, width=float("inf"), allow_unicode=True
    )
    # Every line but an empty one: textwrap's default skips lines of whitespace alone, and
    # inside a literal block those are content (a no-break space, a line of blanks).
    return "\n" + textwrap.indent(block.rstrip("\n"), " " * indent, lambda line: line != "\n")


def hcl_value(value: Any) -> str:
    """An HCL literal: a double-quoted string with JSON's escapes (HCL's too), or a list of them.

    Consul reads HCL 1, where "${" opens an interpolation inside which quotes do not end the
    string, and which has no escape for it; HCL 2 (the parser the checks use) gives "%{" a
    meaning as well. A value holding either is refused rather than misread.
    """
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hcl_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if any(ord(c) < 0x20 and c not in "\n\t\r" for c in text):
        # Never the value itself in a message: what reaches these filters unchecked are secrets.
        raise BakeryError("a value for an HCL file holds a control character HCL cannot carry")
    if "${" in text or "%{" in text:
        raise BakeryError(
            "a value for an HCL file holds '${' or '%{', which HCL reads as an interpolation"
        )
    return json.dumps(text, ensure_ascii=False)


def ini_value(value: Any) -> str:
    """A value for pgBackRest's INI file: one line, no surrounding space, or an error."""
    text = str(value)
    if any(c in text for c in "\r\n\x00") or text != text.strip():
        raise BakeryError("a value for an INI file holds a line break or leading/trailing spaces")
    return text


def envfile_value(value: str) -> str:
    """A double-quoted value for a systemd EnvironmentFile (escapes \\ " $ `)."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise BakeryError("a secret holds a control character or line break: not supported")
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'"{escaped}"'


def sql_literal(value: str) -> str:
    """A standard-conforming SQL string literal."""
    if "\x00" in value:
        raise BakeryError("a SQL value holds a NUL character")
    return "'" + value.replace("'", "''") + "'"


def make_environment(override_dir: Path | None = None) -> jinja2.Environment:
    search = [str(d) for d in TEMPLATE_DIRS]
    if override_dir is not None:
        if not override_dir.is_dir():
            raise BakeryError(f"bakery.template_overrides: {override_dir} is not a directory")
        search.insert(0, str(override_dir))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - these are config files, not HTML; filters quote
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    env.filters.update(
        yaml=to_yaml_inline,
        yaml_block=to_yaml_block,
        yaml_nested=to_yaml_nested,
        hcl=hcl_value,
        ini=ini_value,
        envfile=envfile_value,
        sql=sql_literal,
        shell=shlex.quote,
    )
    return env


def render(env: jinja2.Environment, name: str, **context: Any) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.UndefinedError as error:
        raise BakeryError(f"template {name}: {error.message}") from None
    except jinja2.TemplateError as error:
        raise BakeryError(f"template {name}: {error}") from None
