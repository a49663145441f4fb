"""Where the test cloud keeps its state and which loopback ports it uses."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REGION = "RegionOne"
# Below the kernel's ephemeral range (32768+), so client sockets never take them first.
PORT_BASE = int(os.environ.get("BAKERY_CLOUD_PORT_BASE", "28700"))
PORTS = {
    "keystone": PORT_BASE,
    "glance": PORT_BASE + 1,
    "placement": PORT_BASE + 2,
    "nova": PORT_BASE + 3,
    "neutron": PORT_BASE + 4,
    "rabbitmq": PORT_BASE + 5,
    "epmd": PORT_BASE + 6,
    "rabbitmq-dist": PORT_BASE + 7,
}
SECRET_NAMES = ("admin", "service", "rabbitmq", "env1", "env2")


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(Path(os.environ.get("BAKERY_CLOUD_STATE", "/var/tmp/bakery-test/cloud")))

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def clouds_yaml(self) -> Path:
        return self.root / "clouds.yaml"

    @property
    def admin_clouds_yaml(self) -> Path:
        return self.root / "admin-clouds.yaml"

    @property
    def provisioned(self) -> Path:
        """Written last by a complete bring-up; its JSON describes the environments."""
        return self.root / "provisioned.json"

    def url(self, service: str) -> str:
        suffix = "/v3" if service == "keystone" else ""
        return f"http://{HOST}:{PORTS[service]}{suffix}"

    def secrets(self) -> dict[str, str]:
        """Passwords for this state dir: made once per fresh bring-up, kept 0600, never printed."""
        path = self.root / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {name: secrets.token_urlsafe(24) for name in SECRET_NAMES}
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)
        return values


def write_private(path: Path, text: str) -> None:
    """Write a file that holds secrets: 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
