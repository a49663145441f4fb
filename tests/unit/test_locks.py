"""The lock files dev/setup and the deploy units install from agree with pyproject.toml: every
dependency pinned inside its range and hash-checked, the test tools on the same versions as the
runtime. A changed range without `dev/lock` fails here, not in a scheduled rebuild."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.helpers import PROJECT

LOCKS = PROJECT / "requirements"


def _pins(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a lock written by dev/lock."""
    pins = {}
    text = (LOCKS / lock).read_text()
    for block in re.split(r"\n(?=[a-z0-9])", text):
        match = re.match(r"([a-z0-9][a-z0-9._-]*)==([^\s;\\]+)", block)
        if match:
            pins[match[1]] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(
    ("lock", "extras"), [("bakery.lock", []), ("dev.lock", ["test"])], ids=["runtime", "dev"]
)
def test_every_dependency_is_pinned_inside_its_range_with_hashes(lock, extras):
    pins = _pins(lock)
    assert pins, f"no pins read from {lock}"
    wanted = list(_project()["dependencies"])
    for extra in extras:
        wanted += _project()["optional-dependencies"][extra]
    wanted += ["setuptools>=68", "pip>=23"]  # requirements/build.in
    for line in wanted:
        requirement = Requirement(line)
        name = _normal(requirement.name)
        assert name in pins, f"{name} is not in {lock}: run dev/lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside pyproject.toml's {requirement}: run dev/lock"
        )
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes]
    assert unhashed == []


def test_the_dev_lock_runs_the_runtime_lock_s_versions():
    runtime, dev = _pins("bakery.lock"), _pins("dev.lock")
    differ = {n: (v, dev[n][0]) for n, (v, _) in runtime.items() if dev.get(n, (v,))[0] != v}
    assert differ == {}
    assert set(runtime) <= set(dev)
