"""The builder's result line and the image manifest it carries, checked against the definition.

Every build, local or in a cloud builder VM, ends with `scripts/run-elements` printing
`BAKERY-RESULT {json}` with the manifest of what was installed. An image is only accepted when
that manifest is the one of this build (build id, inputs hash) and its components are the
pinned ones: an element that installed something else must not slip through as a release.
"""

from __future__ import annotations

import json
from typing import Any

from .definition import LoadedDefinition

RESULT_PREFIX = "BAKERY-RESULT "


def console_objects(text: str, prefix: str) -> list[dict]:
    """Every JSON object that follows `prefix` in `text` (a build log, a console log), in order.

    Consoles interleave output: another program (a getty prompt, the kernel) may write before or
    right after the object on the same line, and a console tail may cut a line. So the prefix is
    looked for anywhere in a line, the object read up to its closing brace, and lines that do
    not hold a whole object are skipped, not fatal."""
    decoder = json.JSONDecoder()
    found = []
    for line in text.splitlines():
        start = line.find(prefix)
        if start == -1:
            continue
        try:
            value, _ = decoder.raw_decode(line, start + len(prefix))
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def last_result(text: str) -> dict | None:
    """The last well-formed result in `text`, or None."""
    results = [r for r in console_objects(text, RESULT_PREFIX) if "status" in r]
    return results[-1] if results else None


def manifest_problems(loaded: LoadedDefinition, build_id: str, manifest: Any) -> list[str]:
    """What in `manifest` contradicts this build or the definition's pins (empty: accepted)."""
    if not isinstance(manifest, dict) or not manifest:
        return ["the build printed no manifest"]
    problems = []
    expected = {
        "image": loaded.name,
        "build_id": build_id,
        "inputs_hash": loaded.inputs_hash(),
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            problems.append(f"{key} is {manifest.get(key)!r}, expected {value!r}")
    components = manifest.get("components")
    if not isinstance(components, dict):
        return [*problems, "the manifest lists no components"]
    c = loaded.definition.components

    def installed(name: str, field: str) -> Any:
        entry = components.get(name)
        return entry.get(field) if isinstance(entry, dict) else None

    wanted: list[tuple[str, str, str, bool]] = [  # component, field, pin, prefix match
        ("postgresql", "major", str(c.postgresql.major), False),
        ("patroni", "version", c.patroni.version, False),
        ("psycopg2", "version", c.psycopg2.version, False),
    ]
    if c.consul is not None:
        wanted.append(("consul", "version", c.consul.version, False))
    for name, pinned in (("pgbackrest", c.pgbackrest), ("nebula", c.nebula)):
        if pinned is not None:
            wanted.append((name, "package", pinned.version or "", True))
    if c.exporters is not None:
        wanted += [
            ("prometheus-node-exporter", "package", c.exporters.node_exporter or "", True),
            ("prometheus-postgres-exporter", "package", c.exporters.postgres_exporter or "", True),
        ]
    for name, field, pin, prefix in wanted:
        found = installed(name, field)
        text = "" if found is None else str(found)
        ok = found is not None and (_version_starts_with(text, pin) if prefix else text == pin)
        if not ok:
            pinned_as = f"a version starting with {pin!r}" if prefix else repr(pin)
            problems.append(f"{name} {field} is {found!r}, the definition pins {pinned_as}")
    return problems


def _version_starts_with(version: str, pin: str) -> bool:
    """'1.6' admits 1.6 and 1.6.1+dfsg-3, not 1.60; a pin ending in '.' ('2.') any 2.x."""
    if not version.startswith(pin):
        return False
    rest = version[len(pin) :]
    return pin.endswith(".") or rest == "" or rest[0] in ".-+~:"
