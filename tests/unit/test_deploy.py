"""The shipped systemd units are ones systemd accepts without a warning (an unknown key is
only a warning to systemd, and then silently ignored)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import PROJECT

UNITS = PROJECT / "deploy/systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_rebuild_units(tmp_path):
    # The units name /opt/bakery, where deploy/README.md installs the checkout: here, this one.
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/bakery", str(PROJECT))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr  # warnings too
    service = (UNITS / "bakery-rebuild.service").read_text()
    assert "-f /etc/bakery/cluster.yaml rebuild $BAKERY_REBUILD_OPTIONS" in service
    assert "Environment=BAKERY_REBUILD_OPTIONS=\n" in service  # off unless a drop-in sets it
