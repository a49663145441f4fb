"""The `cloud` fixture: a real OpenStack on loopback for the whole session.

BAKERY_CLOUD_KEEP=1 uses a stack that is already up (`python -m tests.cloud.stack up`) or leaves
the one it starts running, for quick reruns; by default the fixture starts a fresh stack and
stops it at the end, also when tests fail or on SIGTERM, then checks that nothing of it is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import openstack
import openstack.config
import pytest

from tests.sigterm import teardown_first

from .stack import Stack
from .workflow import cluster_config, own_images, remove_leftovers, run_task

_REPORT: list[str] = []


@dataclass
class CloudTier:
    clouds_yaml: Path
    clouds: tuple[str, ...]
    admin_clouds_yaml: Path
    admin_cloud: str
    info: dict = field(repr=False)

    @classmethod
    def of(cls, info: dict) -> CloudTier:
        """The tier as a stack's provisioned.json (`Stack.up()`, `Stack.info()`) describes it."""
        return cls(
            clouds_yaml=Path(info["clouds_yaml"]),
            clouds=tuple(info["clouds"]),
            admin_clouds_yaml=Path(info["admin_clouds_yaml"]),
            admin_cloud=info["admin_cloud"],
            info=info,
        )

    def connect(self, cloud: str) -> openstack.connection.Connection:
        """A connection through the generated clouds.yaml (or the admin one)."""
        path = self.admin_clouds_yaml if cloud == self.admin_cloud else self.clouds_yaml
        config = openstack.config.OpenStackConfig(
            config_files=[str(path)], secure_files=[], load_envvars=False
        )
        return openstack.connection.Connection(config=config.get_one(cloud))


def _running(stack: Stack) -> bool:
    return stack.layout.provisioned.exists() and set(stack.supervisor.recorded()) == set(
        stack.procs
    )


@pytest.fixture(scope="session")
def cloud(request) -> CloudTier:
    stack = Stack()
    keep = os.environ.get("BAKERY_CLOUD_KEEP") == "1"
    try:
        if keep and _running(stack):
            info = {**stack.info(), "reused": True}
        else:
            info = stack.up(fresh=not keep)
        _report(request.config, info)
        yield CloudTier.of(info)
    finally:
        # A SIGTERM (tests/conftest.py) lands here as KeyboardInterrupt, or waits for the stop.
        with teardown_first():
            if not keep:
                stack.down()
                left = stack.leftovers()
                assert not any(left.values()), f"the cloud stack left behind: {left}"


@pytest.fixture(scope="module")
def released(cloud, tmp_path_factory):
    """One released generation in both environments, baked by the real command; the module's
    servers and images are removed at its end."""
    result = run_task(cloud, cluster_config(tmp_path_factory.mktemp("bake")), "bake")
    assert result.returncode == 0, result.stderr
    conns = {name: cloud.connect(name) for name in cloud.clouds}
    yield {name: own_images(conn)[0] for name, conn in conns.items()}
    for conn in conns.values():
        remove_leftovers(conn)


@pytest.fixture(scope="session")
def cloud_report() -> list[str]:
    """Lines for the tier's section of pytest's summary (figures the issues ask for)."""
    return _REPORT


def _report(config, info: dict) -> None:
    if info.get("reused"):
        line = "cloud tier: reusing the running stack (BAKERY_CLOUD_KEEP=1)"
    else:
        kind = "warm" if info["warm"] else "cold"
        line = (
            f"cloud tier: {kind} bring-up {info['bringup_seconds']} s, "
            f"{info['processes']} processes, RSS {info['rss_bytes'] / 2**20:.0f} MiB"
        )
    _REPORT.append(line)
    _REPORT.extend(f"cloud tier: swept {swept}" for swept in info.get("swept", []))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # Fixture setup runs under output capture: step out of it so that CI shows the line now.
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for text in _REPORT:
                reporter.write_line(text)


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("cloud tier")
        for line in _REPORT:
            terminalreporter.write_line(line)
