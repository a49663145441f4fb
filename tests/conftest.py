"""What every tier gets: a SIGTERM ends the run like Ctrl-C, so the fixtures' teardown still
removes what the tier started (tests/sigterm.py)."""

from tests import sigterm


def pytest_configure(config) -> None:
    sigterm.install()


def pytest_unconfigure(config) -> None:
    sigterm.uninstall()
