"""The node's metrics services, started as their units say: the scrape guard (the image's
bakery-scrape-guard.service: nft in the node's namespaces), then node_exporter and
postgres_exporter (Debian's units as installed here by setup, plus the image's drop-ins from
scripts/exporters): their user, EnvironmentFiles and ExecStart, with systemd's `$VAR` and
`${VAR}` expansion. `bakery-job-metrics.path` watches a directory the cluster tier does not
use: it is not run here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bundle import parse_envfile
from processes import Started, minimal_env

from bakery.node.monitoring import SERVICES

__all__ = ["SERVICES", "start"]

REPO = Path(__file__).resolve().parents[2]
IMAGE_UNITS = REPO / "scripts" / "exporters" / "files"
DEBIAN_UNITS = Path("/lib/systemd/system")
GUARD, NODE_EXPORTER, POSTGRES_EXPORTER, JOB_METRICS = SERVICES


@dataclass
class Unit:
    """The [Service] settings this harness uses, from a unit file and its drop-ins."""

    user: str = "root"
    environment_files: list[str] = field(default_factory=list)
    exec_start: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, name: str) -> Unit:
        unit = cls()
        packaged = DEBIAN_UNITS / name
        image = IMAGE_UNITS / name
        dropins = sorted((IMAGE_UNITS / f"{name}.d").glob("*.conf"))
        for path in [image if image.exists() else packaged, *dropins]:
            unit._read(path)
        return unit

    def _read(self, path: Path) -> None:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
                continue
            key, sep, value = line.partition("=")
            if section != "[Service]" or not sep or line.startswith("#"):
                continue
            if key == "User":
                self.user = value
            elif key == "EnvironmentFile":
                self.environment_files.append(value)
            elif key == "ExecStart":
                # An empty assignment resets the list (how drop-ins replace a command).
                self.exec_start = [value] if value else []

    def environment(self, node) -> dict[str, str]:
        """The EnvironmentFiles as the node sees them ('-': optional)."""
        env: dict[str, str] = {}
        for entry in self.environment_files:
            optional = entry.startswith("-")
            path = entry.lstrip("-")
            bundle_path = node.file(path)
            source = bundle_path if bundle_path.exists() else Path(path)
            if not source.exists():
                if optional:
                    continue
                raise FileNotFoundError(f"{node.name}: EnvironmentFile {path} missing")
            env |= parse_envfile(source.read_text())
        return env

    def argv(self, env: dict[str, str]) -> list[str]:
        """ExecStart with systemd's expansion: `${VAR}` one word, `$VAR` split on spaces."""
        (command,) = self.exec_start
        words = []
        for word in shlex.split(command):
            if word.startswith("$") and not word.startswith("${"):
                words += env.get(word[1:], "").split()
                continue
            for name, value in env.items():
                word = word.replace("${" + name + "}", value)
            words.append(word)
        return words


def wanted(node) -> bool:
    """The node's runcmd enables the exporters (monitoring.exporters is on)."""
    runcmd = node.bundle.runcmd()
    return bool(runcmd) and NODE_EXPORTER in runcmd[0]


def start(node) -> dict[str, Started]:
    """Load the guard, then start both exporters on `node`; returns them by service name."""
    if not wanted(node):
        return {}
    guard = Unit.load(GUARD)
    node.enter(shlex.split(guard.exec_start[0]))
    started = {}
    for name in (NODE_EXPORTER, POSTGRES_EXPORTER):
        unit = Unit.load(name)
        env = unit.environment(node)
        argv = node.nsenter(unit.user) + unit.argv(env)
        service_env = minimal_env(**env)
        started[name] = node.sup.start(f"{node.name}-{name.split('.')[0]}", argv, env=service_env)
    return started
