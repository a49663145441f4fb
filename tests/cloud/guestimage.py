"""What of the golden image a cloud-tier guest has, beside the test machine's own files.

A guest runs on the test machine's root filesystem, where the cluster tier's setup installed
Patroni 4.1.5, PostgreSQL 14.23, Nebula, etcd and pgBackRest at the image's paths. What the
image's elements add of bakery's own is read from the elements themselves, those of the image's
definition (its Glance property `bakery_definition`):

- the files they install from their `files/` directories (`install-if-changed "$files/NAME"
  DEST OWNER MODE`), written to DEST on the guest's disk (DEST must lie in one of the
  directories in IMAGE_DIRS, which are mounted into the guest);
- their unit files (the units the guest knows), and the units they enable (`systemctl enable
  UNIT`): started at every boot, as the image's `multi-user.target` would;
- `/etc/bakery/manifest.json`, played from the image's Glance properties: the build wrote the
  real one from what it installed, and the image tier checks that one.

A server from an image that is no bakery image (the stack's plain base image) has none of these:
`systemctl start patroni.service` in its user-data fails as it would on a plain Debian.
What this cannot show is the golden image's own content; the image tier boots the real image.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from units import DISTRIBUTION_UNITS, UNIT_TYPES

from bakery.image.definition import SCRIPTS_DIR, declared_inputs, load_definition

# Directories of bakery's own in the image, (path, owner, group, mode): made on a guest's
# disk at its first boot and mounted into it. /var/lib/bakery/status is the node job status
# contract (root:postgres 0775).
IMAGE_DIRS = [
    ("/etc/bakery", "root", "root", 0o755),
    ("/usr/lib/bakery", "root", "root", 0o755),
    ("/var/lib/bakery", "root", "root", 0o755),
    ("/var/lib/bakery/status", "root", "postgres", 0o775),
    ("/var/lib/bakery/metrics", "root", "root", 0o755),  # node_exporter's textfile directory
    ("/usr/local/sbin", "root", "root", 0o755),  # bakery-job-metrics (empty on Debian)
]
MOUNTED = ["/etc/bakery", "/usr/lib/bakery", "/var/lib/bakery", "/usr/local/sbin"]
MANIFEST = "/etc/bakery/manifest.json"
INSTALL = re.compile(
    r'install-if-changed\s+"\$files/(?P<name>[^"$]+)"\s+"?(?P<dest>[^"\s]+)"?\s+'
    r"(?P<owner>\S+)\s+(?P<mode>[0-7]{3,4})"
)
ENABLE = re.compile(r"systemctl\s+(?:--\S+\s+)*enable\s+(?:--now\s+)?([\w@.-]+\.(?:service|timer))")
VARIABLE = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)\}?")


@dataclass(frozen=True)
class ImageFile:
    source: Path
    dest: str
    owner: str  # user:group
    mode: int


@dataclass
class GuestImage:
    definition: str | None
    elements: list[str] = field(default_factory=list)
    files: list[ImageFile] = field(default_factory=list)
    units: dict[str, Path] = field(default_factory=dict)  # unit name -> its file
    enabled: list[str] = field(default_factory=list)
    manifest: dict | None = None

    def install(self, root: Path) -> list[str]:
        """Put the image's own files under the guest's disk root; returns what it cannot
        place (a file outside the mounted directories would never be seen inside)."""
        problems = []
        for path, owner, group, mode in IMAGE_DIRS:
            d = root / path.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
            os.chmod(d, mode)
        for item in self.files:
            if not any(item.dest.startswith(m + "/") for m in MOUNTED):
                problems.append(f"{item.dest} (from {item.source}) is outside {MOUNTED}")
                continue
            target = root / item.dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, target)
            user, _, group = item.owner.partition(":")
            os.chown(target, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
            os.chmod(target, item.mode)
        if self.manifest is not None:
            target = root / MANIFEST.lstrip("/")
            target.write_text(json.dumps(self.manifest, sort_keys=True) + "\n")
            os.chmod(target, 0o644)
        return problems


def for_image(properties: dict[str, str]) -> GuestImage:
    """The image layer of a server booted from an image with these Glance properties."""
    definition = properties.get("bakery_definition")
    if not definition:
        return GuestImage(None)
    elements = load_definition(definition).elements()
    image = GuestImage(definition, elements)
    for element in elements:
        defaults = {k: v for k, v in declared_inputs(element).items() if v is not None}
        for script in sorted((SCRIPTS_DIR / element).glob("*.sh")):
            text = script.read_text()
            image.enabled += [u for u in ENABLE.findall(text) if u not in image.enabled]
            for m in INSTALL.finditer(text):
                dest = VARIABLE.sub(lambda v, d=defaults: d.get(v[1], v[0]), m["dest"])
                source = SCRIPTS_DIR / element / "files" / m["name"]
                if source.suffix in UNIT_TYPES or "$" in dest:
                    continue  # units are read from the repository by name
                image.files.append(ImageFile(source, dest, m["owner"], int(m["mode"], 8)))
        for unit in sorted((SCRIPTS_DIR / element / "files").glob("*")):
            if unit.suffix in UNIT_TYPES:
                image.units[unit.name] = unit
        # The distribution's units the element extends with drop-ins (its packages'),
        # as installed on the test machine by the tier's setup.
        for dropins in sorted((SCRIPTS_DIR / element / "files").glob("*.d")):
            name = dropins.name.removesuffix(".d")
            if name not in image.units and (DISTRIBUTION_UNITS / name).exists():
                image.units[name] = DISTRIBUTION_UNITS / name
    image.manifest = _manifest(properties)
    return image


def _manifest(properties: dict[str, str]) -> dict:
    """The image's manifest in the shape 90-write-manifest.sh writes, as far as the image's
    Glance properties tell (bake copies build id, inputs hash and pinned versions into them)."""
    components: dict[str, dict] = {}
    major = properties.get("bakery_postgresql_major")
    if major:
        components["postgresql"] = {"major": int(major) if major.isdigit() else major}
    for name in ("patroni", "psycopg2", "consul"):
        if properties.get(f"bakery_{name}"):
            components[name] = {"version": properties[f"bakery_{name}"]}
    return {
        "schema": 1,
        "image": properties.get("bakery_definition"),
        "build_id": properties.get("bakery_build_id"),
        "inputs_hash": properties.get("bakery_inputs_hash"),
        "components": components,
    }
