"""The image's systemd units, read as systemd reads them, for harnesses that run a node's
services outside a VM: whom a service runs as, its environment and its commands come from
the unit file the image installs, not from the harness.

Only what bakery's units use is understood (the [Service] keys below, `-` before a path or a
command, systemd's quoting in Environment=); anything else in [Service] is an error, so a unit
that grows a key the harnesses do not honour fails loudly instead of running differently.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bakery.checks import parse_envfile

# Keys a harness honours, and keys that change nothing outside systemd (hardening, restart
# policy, logging): accepted and ignored.
HONOURED = {
    "User",
    "Group",
    "EnvironmentFile",
    "Environment",
    "ExecStartPre",
    "ExecStart",
    "ExecStop",
    "KillMode",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "TimeoutSec",
    "Type",
}
IGNORED_PREFIXES = ("Protect", "Private", "Restrict", "Restart", "Limit", "Standard", "Memory")
IGNORED = {
    "ExecReload",
    "KillSignal",
    "NoNewPrivileges",
    "LockPersonality",
    "SyslogIdentifier",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
}


@dataclass(frozen=True)
class Command:
    argv: list[str]
    ignore_failure: bool  # systemd's `-` prefix


@dataclass
class Unit:
    name: str
    service: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Unit:
        unit = cls(path.name)
        section = None
        for raw in path.read_text().splitlines():
            text = raw.strip()
            if not text or text.startswith(("#", ";")):
                continue
            if text.startswith("["):
                section = text.strip("[]")
                continue
            key, _, value = text.partition("=")
            if section != "Service":
                continue
            key = key.strip()
            if key not in HONOURED and key not in IGNORED and not key.startswith(IGNORED_PREFIXES):
                raise ValueError(f"{path}: [Service] {key}= is not understood by the harness")
            unit.service.setdefault(key, []).append(value.strip())
        return unit

    def one(self, key: str, default: str | None = None) -> str | None:
        values = self.service.get(key, [])
        return values[-1] if values else default

    @property
    def user(self) -> str:
        return self.one("User", "root")

    def environment(
        self,
        read: Callable[[str], str | None],
        parse: Callable[[str], dict[str, str]] = parse_envfile,
    ) -> dict[str, str]:
        """EnvironmentFile= in order (`read(path)` gives a node's file, None when missing; a
        missing file without `-` is an error, as in systemd), then Environment=."""
        env: dict[str, str] = {}
        for entry in self.service.get("EnvironmentFile", []):
            optional = entry.startswith("-")
            path = entry.removeprefix("-")
            text = read(path)
            if text is None:
                if optional:
                    continue
                raise FileNotFoundError(f"{self.name}: EnvironmentFile {path} is missing")
            env.update(parse(text))
        for entry in self.service.get("Environment", []):
            for assignment in shlex.split(entry):
                key, _, value = assignment.partition("=")
                env[key] = value
        return env

    def commands(self, key: str) -> list[Command]:
        found = []
        for entry in self.service.get(key, []):
            ignore = entry.startswith("-")
            found.append(Command(shlex.split(entry.removeprefix("-")), ignore))
        return found

    def timeout(self, key: str) -> float:
        value = self.one(key) or self.one("TimeoutSec") or "90"
        return float(value.removesuffix("s"))
