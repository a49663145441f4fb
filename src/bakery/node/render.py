"""`invoke render`: every node's bundle and user-data, written under one directory.

Everything is rendered and checked in memory first; the directory is written only when every
node succeeded, into a temporary sibling that replaces the old render in one rename.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..config import Settings
from ..errors import BakeryError
from ..files import write_file
from . import monitoring
from . import plan as planning
from .bundle import RESTAPI_PORT, Bundle, build_bundles, describe, node_file_path

MANIFEST = "manifest.json"


def render_cluster(
    settings: Settings, az_labels: Iterable[str], environ: dict[str, str] | None = None
) -> list[Bundle]:
    """Plan and render the chosen AZs' nodes; record overlay addresses once all succeeded."""
    plan = planning.make_plan(settings, az_labels)
    bundles = build_bundles(settings, plan, environ)
    planning.save(settings, plan)
    return bundles


def prometheus_files(settings: Settings, bundles: list[Bundle]) -> dict[str, str]:
    """DIR/prometheus/: what Prometheus needs to scrape these nodes (deploy/prometheus)."""
    ca = settings.pki.ca_cert.read_text()
    nodes = [(b.node, f"{b.node.address}:{RESTAPI_PORT}") for b in bundles]
    files = monitoring.prometheus_files(settings, nodes, ca)
    return {f"{monitoring.PROMETHEUS_DIR}/{name}": content for name, content in files.items()}


# Marks a directory as a render, which a later render may replace (and nothing else may be).
KIND = "bakery-render"


def check_output(out: Path) -> None:
    """Refuse an --out that is not ours to replace; called before anything is created."""
    if out.exists() and not out.is_dir():
        raise BakeryError(f"--out {out}: is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not _is_render(out):
        raise BakeryError(
            f"--out {out}: exists, is not empty and holds no earlier render; "
            "refusing to overwrite it: choose another directory"
        )


def _is_render(out: Path) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def write_bundles(
    bundles: list[Bundle], out: Path, scope: str, extra: dict[str, str] | None = None
) -> None:
    """`extra`: further files of the render (relative path -> content), such as the target
    list for Prometheus (monitoring.prometheus_files)."""
    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for bundle in bundles:
            node_dir = staging / bundle.node.name
            write_file(node_dir / "user-data", bundle.user_data, 0o600)
            for f in bundle.files:
                write_file(node_file_path(node_dir / "files", f.path), f.content, int(f.mode, 8))
        for relative, content in (extra or {}).items():
            write_file(staging / relative, content)
        manifest = {"kind": KIND, "scope": scope, "nodes": [describe(b) for b in bundles]}
        write_file(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        staging.chmod(0o700)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
