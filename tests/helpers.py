"""Shared test helpers: a small valid configuration to vary, and running the real CLI."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
INVOKE = Path(sys.executable).with_name("invoke")


def base_config(tmp: Path, dcs: str = "consul", overlay: bool = True) -> dict:
    """A valid `bakery:` section with every path inside `tmp`."""
    config = {
        "state_dir": str(tmp / "state"),
        "environments": {"prod1": {"cloud": "prod1"}, "prod4": {"cloud": "prod4"}},
        "azs": {
            "a": {
                "environment": "prod1",
                "network": "postgres",
                "subnet": "10.10.1.0/24",
                "flavor": "SCS-2V-4",
                "security_groups": ["postgres"],
                "addresses": ["10.10.1.20"],
            },
            "b": {
                "environment": "prod4",
                "network": "postgres",
                "subnet": "10.20.1.0/24",
                "flavor": "SCS-2V-4",
                "addresses": ["10.20.1.20"],
            },
        },
        "cluster": {
            "scope": "patroni42",
            "namespace": "terra42",
            "dcs": {
                "type": dcs,
                "members": [
                    {"address": f"100.102.1.{30 + i}", "failure_domain": "external"}
                    for i in range(3)
                ],
            },
            "postgresql": {"allowed_networks": ["100.102.0.0/22", "10.0.0.0/8"]},
        },
        "pki": {"ca_cert": str(tmp / "ca/ca.pem"), "ca_key": str(tmp / "ca/ca.key")},
    }
    if dcs == "consul":
        config["cluster"]["dcs"]["consul"] = {
            "datacenter": "de-west",
            "gossip_key": {"file": str(tmp / "consul/gossip.key")},
            "acl_token": {"file": str(tmp / "consul/acl.token")},
        }
    if overlay:
        config["overlay"] = {
            "type": "nebula",
            "cidr": "100.102.0.0/22",
            "first_node_address": "100.102.1.36",
            "ca_cert": str(tmp / "nebula/ca.crt"),
            "ca_key": str(tmp / "nebula/ca.key"),
            "lighthouses": [
                {"overlay_address": "100.102.0.1", "public_address": "192.0.2.10:4242"}
            ],
        }
    return config


def merged(config: dict, **paths) -> dict:
    """A copy of `config` with dotted paths set: merged(c, **{"azs.a.nodes": 2})."""
    result = copy.deepcopy(config)
    for dotted, value in paths.items():
        *parents, last = dotted.split(".")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return result


_DELETE = object()
DELETE = _DELETE


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump({"bakery": config}, sort_keys=False))
    return path


def invoke(
    *args: str,
    cwd: Path = PROJECT,
    env: dict | None = None,
    root: Path = PROJECT,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run the real `invoke` command line with the tasks.py found in `root`."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(INVOKE), "--search-root", str(root), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def tree(path: Path) -> dict[str, bytes]:
    """Every file below `path` with its content, to prove that nothing changed."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def error_lines(stderr: str) -> list[str]:
    """stderr without the configuration's warnings (`bakery: warning: ...`), which every task
    prints first: tests of an error's exact wording compare only what the error says."""
    return [line for line in stderr.splitlines() if not line.startswith("bakery: warning: ")]


@contextlib.contextmanager
def serving(server) -> Iterator:
    """A socketserver (a stand-in HTTP API) answering from a thread for the block."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
