"""The harnesses' own safety rules: which namespaces a sweep may touch, and how SIGTERM unwinds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import PROJECT
from tests.owned_netns import OWNED, owned_name


def test_an_owned_name_carries_its_owner():
    name = owned_name("t")
    for candidate in (name, f"{name}-dcs"):
        match = OWNED.fullmatch(candidate)
        assert match is not None
        assert int(match["owner"]) == os.getpid()


@pytest.mark.parametrize(
    "foreign",
    [
        "bktd485da-dcs",  # the cluster harness's names before they carried an owner
        "bkr-1a2b3c4d",
        "bkimg1234",
        "bkt-1234-abc",  # too short a token
        "bkt-1234-a1b2c3-dcs/x",
        "docker-1234-a1b2c3",
        "cni-1234",
    ],
)
def test_names_of_others_are_never_swept(foreign):
    assert OWNED.fullmatch(foreign) is None


def _run(script: str) -> list[str]:
    """Run `script` after installing the handler, in a process of its own: the handler is
    process-wide and remembers an interrupt."""
    prelude = "import os, signal, time\nfrom tests import sigterm\nsigterm.install()\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_sigterm_interrupts_like_ctrl_c_once():
    out = _run(
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # a second one while tearing down\n"
        "time.sleep(0.2)\n"
        "print('teardown-went-on')\n"
    )
    assert out == ["interrupted", "teardown-went-on"]


def test_sigterm_during_a_teardown_waits_for_its_end():
    out = _run(
        "try:\n"
        "    with sigterm.teardown_first():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.2)\n"
        "        print('teardown-done')\n"
        "    print('not-reached')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    assert out == ["teardown-done", "interrupted"]
