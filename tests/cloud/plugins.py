"""Put the test-only plugins (tests/cloud/plugins/) into the cached service venvs.

Done at every bring-up, not at install: a plugin change then needs no reinstall, and the venv
cache key stays a function of the pins alone.
- bakery_guest.py    -> nova/virt/ (Nova loads virt drivers only from that package)
- bakery_bindall.py  -> neutron venv, with a small dist-info whose entry point names it as the
                        ML2 mechanism driver `bakery_bindall`
- bakery_sqlite_immediate.py + a .pth file that imports it -> every venv

The venvs under /var/cache/bakery-test/openstack are shared by every stack on the machine,
whichever checkout (branch) it runs from. So the two drivers are not copied there: a *shim* is,
the same text for every checkout, that loads the real module from the directory named by
$BAKERY_CLOUD_PLUGINS, which each stack sets for its own services to its own checkout's
tests/cloud/plugins. Two stacks of two branches then each run their own driver, and neither
rewrites what the other loads. (bakery_sqlite_immediate is loaded by every Python of those
venvs, the installers' too, where no stack sets the variable: it stays a copy, and is the same
in every branch.)
"""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "plugins"
PLUGINS_VARIABLE = "BAKERY_CLOUD_PLUGINS"
SHIMMED = {"bakery_guest": "nova/virt/bakery_guest.py", "bakery_bindall": "bakery_bindall.py"}
SHIM = f'''"""Installed by bakery's cloud tier (tests/cloud/plugins.py), the same for every
checkout: loads the real module from ${PLUGINS_VARIABLE}, set by the stack that runs this."""

import importlib.util
import os
import sys

_directory = os.environ.get("{PLUGINS_VARIABLE}")
if not _directory:
    raise ImportError(f"{{__name__}}: ${PLUGINS_VARIABLE} is not set (the bakery stack sets it)")
_path = os.path.join(_directory, __name__.rsplit(".", 1)[-1] + ".py")
_spec = importlib.util.spec_from_file_location(__name__, _path)
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module  # the importer hands out the real module from here on
_spec.loader.exec_module(_module)
'''


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def service_env() -> dict[str, str]:
    """What every service of a stack needs to load this checkout's plugins."""
    return {PLUGINS_VARIABLE: str(SOURCE)}


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _copy(name: str, dest: Path) -> None:
    _write_if_changed(dest, (SOURCE / name).read_text())


def deploy(venvs: dict[str, Path]) -> None:
    for venv in venvs.values():
        site = site_packages(venv)
        _copy("bakery_sqlite_immediate.py", site / "bakery_sqlite_immediate.py")
        _write_if_changed(site / "bakery_sqlite_immediate.pth", "import bakery_sqlite_immediate\n")
    _write_if_changed(site_packages(venvs["nova"]) / SHIMMED["bakery_guest"], SHIM)
    site = site_packages(venvs["neutron"])
    _write_if_changed(site / SHIMMED["bakery_bindall"], SHIM)
    dist = site / "bakery_bindall-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    _write_if_changed(
        dist / "METADATA", "Metadata-Version: 2.1\nName: bakery-bindall\nVersion: 0.1\n"
    )
    _write_if_changed(
        dist / "entry_points.txt",
        "[neutron.ml2.mechanism_drivers]\nbakery_bindall = bakery_bindall:BindAllMechanismDriver\n",
    )
