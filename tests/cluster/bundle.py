"""The rendered bundle as cloud-init would lay it out: `invoke render`, then each node's
`write_files` from its user-data, placed under that node's root with owner and mode.

The contents are written byte for byte as the user-data holds them; the only relocation is the
node root, which the node's own mount namespace puts back at the real paths (nodes.py).
"""

from __future__ import annotations

import base64
import grp
import gzip
import json
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from bakery import checks

REPO = Path(__file__).resolve().parents[2]
CONFIG_TEMPLATE = Path(__file__).with_name("cluster.yaml")


@dataclass
class NodeBundle:
    name: str
    az: str
    underlay: str
    overlay: str
    user_data: dict[str, Any]
    # DIR/<node>/files from the render, used to cross-check write_files; None for a cloud
    # guest, which has only its user-data, as a real server does.
    files_dir: Path | None

    def write_files(self) -> list[dict[str, Any]]:
        return self.user_data.get("write_files", [])

    def runcmd(self) -> list[Any]:
        return self.user_data.get("runcmd", [])


def write_config(base: Path, overrides: dict[str, Any] | None = None) -> Path:
    """tests/cluster/cluster.yaml with every path moved into the run's directory."""
    doc = yaml.safe_load(CONFIG_TEMPLATE.read_text())
    settings = doc["bakery"]
    state = base / "state"
    settings["state_dir"] = str(state)
    settings["pki"]["ca_cert"] = str(state / "ca" / "ca.pem")
    settings["pki"]["ca_key"] = str(state / "ca" / "ca.key")
    settings["overlay"]["ca_cert"] = str(state / "nebula" / "ca.crt")
    settings["overlay"]["ca_key"] = str(state / "nebula" / "ca.key")
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = settings
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = base / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def settings_of(config: Path) -> dict[str, Any]:
    return yaml.safe_load(config.read_text())["bakery"]


def render(config: Path, out: Path, azs: list[str], log: Path) -> list[NodeBundle]:
    """Create the CAs and render the bundles with the project's own CLI."""
    invoke = REPO / ".venv" / "bin" / "invoke"
    argv = [str(invoke), "-f", str(config), "ca", "render", "--out", str(out)]
    for az in azs:
        argv += ["--az", az]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    res = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    log.write_text(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
    if res.returncode != 0:
        raise RuntimeError(f"invoke render failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return load(out, settings_of(config))


def load(out: Path, settings: dict[str, Any]) -> list[NodeBundle]:
    manifest = json.loads((out / "manifest.json").read_text())
    bundles = []
    for entry in manifest["nodes"]:
        name = entry["name"]
        user_data_text = (out / name / "user-data").read_text()
        if not user_data_text.startswith("#cloud-config"):
            raise ValueError(f"{name}/user-data does not start with #cloud-config")
        bundles.append(
            NodeBundle(
                name=name,
                az=entry["az"],
                underlay=entry["private_address"],
                overlay=entry["overlay_address"],
                user_data=yaml.safe_load(user_data_text),
                files_dir=out / name / "files",
            )
        )
    return bundles


def decode(item: dict[str, Any]) -> bytes:
    """The bytes cloud-init writes for one write_files entry (its `encoding` rules)."""
    content = item.get("content", "")
    encoding = item.get("encoding", "text/plain")
    raw = content.encode() if isinstance(content, str) else bytes(content)
    if encoding in ("b64", "base64"):
        return base64.b64decode(raw)
    if encoding in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(raw))
    if encoding in ("gz", "gzip"):
        return gzip.decompress(raw)
    if encoding != "text/plain":
        raise ValueError(f"write_files encoding {encoding!r} unknown to the harness")
    return raw


def ids(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid


def place(bundle: NodeBundle, root: Path) -> list[str]:
    """Write the node's files under `root` as cloud-init would at `/`; returns their paths.

    Each file is also compared with the render's `files/` copy, when there is one: both must
    be the same bundle.
    """
    placed = []
    for item in bundle.write_files():
        path = PurePosixPath(item["path"])
        data = decode(item)
        copy = bundle.files_dir / path.relative_to("/") if bundle.files_dir else None
        if copy is not None and copy.read_bytes() != data:
            raise ValueError(f"{bundle.name}: {path} in user-data differs from {copy}")
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        uid, gid = ids(item.get("owner", "root:root"))
        os.chown(target, uid, gid)
        os.chmod(target, int(str(item.get("permissions", "0644")), 8))
        placed.append(str(path))
    return placed


class Masked(str):
    """A secret: a normal string to every program, '***' in any repr (pytest tracebacks)."""

    def __repr__(self) -> str:
        return "'***'"


def parse_envfile(text: str) -> dict[str, str]:
    """patroni.env as the node reads it (bakery's own parser, the one its checks use), with
    every value Masked: the file holds the node's passwords."""
    return {key: Masked(value) for key, value in checks.parse_envfile(text).items()}
