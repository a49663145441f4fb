"""The cloud stack's plugins in the shared service venvs (tests/cloud/plugins.py): the module a
stack puts there is a shim, the same for every checkout, and each stack's processes load their
own checkout's driver through it, whatever another checkout's stack deployed last."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cloud import plugins


def _venv(tmp: Path) -> Path:
    """A stand-in for the shared Nova and Neutron venvs: their site-packages only."""
    site = tmp / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "nova" / "virt").mkdir(parents=True)
    for package in (site / "nova", site / "nova" / "virt"):
        (package / "__init__.py").write_text("")
    return tmp / "venv"


def _checkout(tmp: Path, name: str) -> Path:
    plugins_dir = tmp / name / "tests" / "cloud" / "plugins"
    plugins_dir.mkdir(parents=True)
    for module in plugins.SHIMMED:
        (plugins_dir / f"{module}.py").write_text(f"CHECKOUT = {name!r}\n")
    return plugins_dir


def _load(venv: Path, module: str, plugins_dir: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != plugins.PLUGINS_VARIABLE}
    env["PYTHONPATH"] = str(plugins.site_packages(venv))
    if plugins_dir is not None:
        env[plugins.PLUGINS_VARIABLE] = str(plugins_dir)
    code = f"import {module} as m, sys; print(m.CHECKOUT, m.__file__, sys.modules[{module!r}] is m)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_two_checkouts_stacks_each_load_their_own_driver(tmp_path):
    venv = _venv(tmp_path)
    shim = plugins.site_packages(venv) / plugins.SHIMMED["bakery_guest"]
    checkouts = {name: _checkout(tmp_path, name) for name in ("main", "guests")}
    # What a stack deploys does not depend on its checkout: the venv stays the same.
    shim.write_text(plugins.SHIM)
    deployed = shim.read_text()
    assert str(plugins.SOURCE) not in deployed
    for name, plugins_dir in checkouts.items():
        for module in ("nova.virt.bakery_guest", "bakery_bindall"):
            dest = plugins.site_packages(venv) / plugins.SHIMMED[module.rsplit(".", 1)[-1]]
            dest.write_text(plugins.SHIM)
            result = _load(venv, module, plugins_dir)
            assert result.returncode == 0, result.stderr
            checkout, path, registered = result.stdout.split()
            assert checkout == name
            assert Path(path) == plugins_dir / (module.rsplit(".", 1)[-1] + ".py")
            assert registered == "True"  # Nova's importer finds the real module by its name


def test_a_process_without_the_stacks_variable_is_refused_by_name(tmp_path):
    venv = _venv(tmp_path)
    (plugins.site_packages(venv) / plugins.SHIMMED["bakery_guest"]).write_text(plugins.SHIM)
    result = _load(venv, "nova.virt.bakery_guest", None)
    assert result.returncode != 0
    assert f"${plugins.PLUGINS_VARIABLE} is not set" in result.stderr


def test_every_service_of_a_stack_is_given_its_checkouts_plugins():
    assert plugins.service_env() == {plugins.PLUGINS_VARIABLE: str(plugins.SOURCE)}
    for module in plugins.SHIMMED:
        assert (plugins.SOURCE / f"{module}.py").is_file()
