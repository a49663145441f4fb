"""Put the test-only plugins (tests/cloud/plugins/) into the cached service venvs.

Done at every bring-up, not at install: a plugin change then needs no reinstall, and the venv
cache key stays a function of the pins alone.
- bakery_guest.py    -> nova/virt/ (Nova loads virt drivers only from that package)
- bakery_bindall.py  -> neutron venv, with a small dist-info whose entry point names it as the
                        ML2 mechanism driver `bakery_bindall`
- bakery_sqlite_immediate.py + a .pth file that imports it -> every venv
"""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "plugins"


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


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
    _copy("bakery_guest.py", site_packages(venvs["nova"]) / "nova/virt/bakery_guest.py")
    site = site_packages(venvs["neutron"])
    _copy("bakery_bindall.py", site / "bakery_bindall.py")
    dist = site / "bakery_bindall-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    _write_if_changed(
        dist / "METADATA", "Metadata-Version: 2.1\nName: bakery-bindall\nVersion: 0.1\n"
    )
    _write_if_changed(
        dist / "entry_points.txt",
        "[neutron.ml2.mechanism_drivers]\nbakery_bindall = bakery_bindall:BindAllMechanismDriver\n",
    )
