"""Empty SQLite databases of every service, made once per venv key and copied at each bring-up.

Creating the schemas takes six Python processes and ~1 min of CPU on two cores, and gives the
same result every time for the same pins; so it runs once, next to the cached venvs
(<cache>/<key>/db-template/), and a fresh bring-up only copies the files. The schemas hold no
secret and no path: passwords, URLs and cell mappings are written at each bring-up.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import config, install, plugins
from .layout import Layout
from .services import run

DATABASES = ("keystone", "glance", "placement", "nova_api", "nova", "neutron")
MARKER = ".complete"

NEUTRON_SCHEMA = """
import sys
import sqlalchemy
from neutron.db.migration.models import head  # noqa: F401  (registers every model)
from neutron_lib.db import model_base
model_base.BASEV2.metadata.create_all(sqlalchemy.create_engine(sys.argv[1]))
"""


def template_dir() -> Path:
    return install.venv_root() / "db-template"


def _sync(layout: Layout, venvs: dict[str, Path]) -> None:
    etc = layout.etc
    nova_manage = [venvs["nova"] / "bin/nova-manage", "--config-file", etc / "nova/nova.conf"]
    steps = {
        "keystone": [[venvs["keystone"] / "bin/keystone-manage", "--config-file",
                      etc / "keystone/keystone.conf", "db_sync"]],
        "glance": [[venvs["glance"] / "bin/glance-manage", "--config-dir", etc / "glance",
                    "db_sync"]],
        "nova": [
            [venvs["nova"] / "bin/placement-manage", "--config-file",
             etc / "placement/placement.conf", "db", "sync"],
            [*nova_manage, "api_db", "sync"],
            [*nova_manage, "db", "sync", "--local_cell"],
        ],
        # `neutron-db-manage upgrade head` cannot ALTER constraints on SQLite: create the
        # tables of the current models directly.
        "neutron": [[venvs["neutron"] / "bin/python", "-c", NEUTRON_SCHEMA,
                     config.sqlite(layout, "neutron")]],
    }  # fmt: skip

    def sync(name: str) -> None:
        for argv in steps[name]:
            run(layout, f"schema-{name}", argv)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(sync, steps))


def ensure(venvs: dict[str, Path]) -> None:
    """Build the templates unless this venv key has them already."""
    target = template_dir()
    if (target / MARKER).exists():
        return
    start = time.monotonic()
    plugins.deploy(venvs)
    with tempfile.TemporaryDirectory(prefix="bakery-schema-") as tmp:
        layout = Layout(Path(tmp))
        config.render_all(layout, venvs)
        try:
            _sync(layout, venvs)
        except RuntimeError as err:
            logs = target.parent / "db-template-logs"
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(layout.logs, logs)
            raise RuntimeError(f"{err} (logs kept in {logs})") from None
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in DATABASES:
            shutil.copy(layout.data / "db" / f"{name}.sqlite", target)
    (target / MARKER).write_text("")
    print(f"cloud schema: database templates made in {time.monotonic() - start:.0f} s")


def copy_into(layout: Layout) -> None:
    db = layout.data / "db"
    db.mkdir(parents=True, exist_ok=True)
    for name in DATABASES:
        shutil.copy(template_dir() / f"{name}.sqlite", db)
    # cell0 is a cell database like any other: same schema as cell1's.
    shutil.copy(template_dir() / "nova.sqlite", db / "nova_cell0.sqlite")
